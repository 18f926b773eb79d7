"""Run by test_numba_cuda_simulated.py in a process with NUMBA_ENABLE_CUDASIM=1 (set before Numba
loads): the Numba CUDA SIMT kernel on small inputs must equal the CPU kernel."""

from __future__ import annotations

import os

import numpy as np

from hpcrag.kernels import numba_cpu, numba_cuda

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
sizes = [90, 0, 37, 5, 60]
offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
vectors = rng.standard_normal((offsets[-1], 24)).astype(np.float16)
ids = rng.permutation(1000)[: offsets[-1]].astype(np.int64)
sqnorms = (vectors.astype(np.float32) ** 2).sum(axis=1)
queries = rng.standard_normal((4, 24)).astype(np.float32)
probes = np.array([[0, 2, -1], [1, 3, 4], [3, -1, -1], [-1, -1, -1]], dtype=np.int64)
for k in (1, 7, 12):
    for l2 in (False, True):
        keys, found = numba_cuda.scan_lists(queries, probes, vectors, ids, sqnorms, offsets, k, l2)
        want_keys, want_ids = numba_cpu.scan_lists(queries, probes, vectors, ids, sqnorms, offsets, k, l2)
        np.testing.assert_array_equal(found.copy_to_host(), want_ids)
        np.testing.assert_allclose(keys.copy_to_host(), want_keys, rtol=1e-5)
print("simulated SIMT kernel equals the CPU kernel")
