"""Tiered vLLM serving: launch specs, the Slurm launcher and its in-job supervisor, the endpoint
registry, and burst adapters for cloud capacity. vLLM always runs as its own process."""
