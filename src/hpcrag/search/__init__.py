"""Distributed vector search: a global IVF whose inverted lists are partitioned across MPI ranks.

from hpcrag.search import DistributedIndex, build_index, BuildOptions, make_comm
"""

from hpcrag.search.build import BuildOptions, build_index
from hpcrag.search.comm import LocalComm, MpiComm, NcclComm, make_comm
from hpcrag.search.index import DistributedIndex, SearchResult, UpdateResult
from hpcrag.search.metric import Metric

__all__ = [
    "BuildOptions",
    "DistributedIndex",
    "LocalComm",
    "Metric",
    "MpiComm",
    "NcclComm",
    "SearchResult",
    "UpdateResult",
    "build_index",
    "make_comm",
]
