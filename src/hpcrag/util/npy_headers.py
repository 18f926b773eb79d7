"""numpy's .npy header reader, one thread at a time.

numpy parses each .npy header (also inside an .npz) with `ast.literal_eval`, and CPython 3.11 can
fail an AST built while another thread builds one: "SystemError: AST constructor recursion depth
mismatch" (python/cpython#106905). Services read request bodies on worker threads, and one such
failure made a valid concurrent .npy search look like a malformed body (a 400). Holding this lock
while numpy reads headers costs microseconds.
"""

from __future__ import annotations

import threading

HEADER_LOCK = threading.Lock()
