"""Modules that run inside vLLM's own environment (put on its PYTHONPATH by the supervisor).

They import nothing of hpcrag and only the standard library: vLLM's environment has neither.
"""
