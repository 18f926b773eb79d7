"""Distance kernels with fused top-k: Numba on the CPU, a Numba CUDA SIMT kernel, and FP16
tensor-core (WMMA) CUDA C++ kernels from `kernels/*.cu` loaded through CuPy. Nothing here imports
the search package; every GPU import is lazy."""

import os

# Numba builds exception messages when it loads code, and where colorama is installed (a dependency
# of skypilot) that starts colorama, which writes a terminal reset (ESC[0m) to stdout at exit: under
# mpirun, whose ranks write to a pseudo-terminal, it trails every command's output. Plain messages.
os.environ.setdefault("NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING", "1")
