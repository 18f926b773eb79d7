"""Tensor-parallel choice: the smallest power of two of GPUs that holds a replica with headroom.

"Fits" means every GPU's share (see `MemoryPlan.per_gpu_gb`) stays within VRAM x the serving
gpu_memory_utilization (0.92 by default): the remainder is the headroom. TP must divide the attention
heads (a vLLM rule) and stays within one node (at most 8 GPUs); past that, pipeline stages across
nodes are added, also in powers of two.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcrag.catalog.memory import MemoryPlan
from hpcrag.config.schema import GpuType

TP_SIZES = (1, 2, 4, 8)
MAX_PIPELINE = 4


@dataclass(frozen=True)
class Parallelism:
    gpu: str
    tp: int
    pp: int
    per_gpu_gb: float
    usable_gb: float

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def fits(self) -> bool:
        return self.per_gpu_gb <= self.usable_gb

    def describe(self) -> str:
        layout = f"TP={self.tp}" + (f", PP={self.pp}" if self.pp > 1 else "")
        return (
            f"{layout} on {self.gpus} GPU(s): {self.per_gpu_gb:.1f} of {self.usable_gb:.1f} usable GB per GPU"
        )


def choose(
    plan: MemoryPlan, gpu_name: str, gpu: GpuType, utilization: float, gpus_per_node: int = 8
) -> Parallelism | None:
    """The smallest layout that fits, or None when even MAX_PIPELINE full nodes cannot hold it."""
    usable = gpu.vram_gb * utilization
    tp_sizes = [tp for tp in TP_SIZES if tp <= gpus_per_node and (plan.heads is None or plan.heads % tp == 0)]
    pp = 1
    while pp <= MAX_PIPELINE:
        for tp in tp_sizes if pp == 1 else tp_sizes[-1:]:
            layout = Parallelism(gpu_name, tp, pp, plan.per_gpu_gb(tp, pp), usable)
            if layout.fits:
                return layout
        pp *= 2
    return None


def precision_on(precision: str, gpu_name: str, gpu: GpuType) -> tuple[str, str | None]:
    """The precision a GPU can run, and why it differs from the one asked for (None when it does not).

    FP8 and FP4 need tensor-core support (PRD §6): without it the weights fall back to FP16, which is
    what makes a 70B model need TP=4 on A100s but TP=2 on H100s.
    """
    if precision == "fp8" and not gpu.fp8:
        return "fp16", f"{gpu_name} has no FP8 support: planned in fp16"
    if precision == "fp4" and not gpu.fp4:
        fallback = "fp8" if gpu.fp8 else "fp16"
        return fallback, f"{gpu_name} has no FP4 support: planned in {fallback}"
    return precision, None
