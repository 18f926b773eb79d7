"""hpcrag: HPC batch and serving toolkit on Slurm."""

__version__ = "0.1.0"
