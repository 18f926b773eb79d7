"""The local multi-site Slurm used for development and CI (`scripts/dev-cluster`)."""

from hpcrag.devcluster.cluster import DevCluster, DevClusterError

__all__ = ["DevCluster", "DevClusterError"]
