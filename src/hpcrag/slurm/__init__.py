"""Slurm access: one command helper, per-site targets, generated configs, status, jobs and executors."""
