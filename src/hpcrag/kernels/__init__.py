"""Distance kernels with fused top-k: Numba on the CPU, a Numba CUDA SIMT kernel, and FP16
tensor-core (WMMA) CUDA C++ kernels from `kernels/*.cu` loaded through CuPy. Nothing here imports
the search package; every GPU import is lazy."""
