"""GPU memory of one vLLM replica, from the model's architecture where it is known.

The PRD's formula (§6) guesses the KV cache as ~1 MB per token per 10B parameters and activations as
15% of the weights. Here, when the architecture is in `models.yaml`:

- weights: parameters x bytes of the precision (all experts of a mixture-of-experts model);
- KV cache: context x batch x bytes per token, where a token costs 2 x kv_heads x head_dim per layer
  (grouped-query attention) or kv_lora_rank + rope_head_dim per layer (multi-head latent attention),
  at the KV cache's precision (the activations' precision, bf16, unless fp8 is asked for);
- activations: one engine step of `BATCHED_TOKENS` tokens (vLLM's --max-num-batched-tokens, which the
  launch spec passes, so the allowance holds), ~12 hidden-size vectors of 2 bytes per token in flight,
  plus fp32 logits for the batch;
- runtime overhead: `OVERHEAD_GB_PER_GPU` for the CUDA context, cuBLAS/NCCL workspaces and CUDA graphs.

Without an architecture (`--params` only) the PRD's own formula is used, and the plan says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcrag.config.schema import ModelArch
from hpcrag.errors import HpcragError

PRECISION_BYTES = {
    "fp32": 4.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "fp4": 0.5,
    "int4": 0.5,
    "awq": 0.5,
    "gptq": 0.5,
}
KV_DTYPE_BYTES = {"auto": 2.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0}
BATCHED_TOKENS = 8192
HIDDEN_VECTORS_PER_TOKEN = 12
OVERHEAD_GB_PER_GPU = 2.0
GB = 1e9


@dataclass(frozen=True)
class MemoryPlan:
    """Memory of one replica in GB (1e9 bytes), split the way tensor parallelism splits it."""

    model: str | None
    precision: str
    context: int
    batch: int
    weights_gb: float
    kv_cache_gb: float
    kv_bytes_per_token: float
    activation_gb: float
    basis: str
    kv_replicated_from_tp: int | None
    heads: int | None

    @property
    def total_gb(self) -> float:
        """Weights, KV cache and activations on one GPU, plus one GPU's runtime overhead."""
        return self.weights_gb + self.kv_cache_gb + self.activation_gb + OVERHEAD_GB_PER_GPU

    def per_gpu_gb(self, tp: int, pp: int = 1) -> float:
        """What each of tp x pp GPUs holds: weights and KV split, activations and overhead not."""
        shards = tp * pp
        kv = self.kv_cache_gb / shards
        if self.kv_replicated_from_tp is not None and tp > self.kv_replicated_from_tp:
            # vLLM keeps whole KV heads per GPU: past kv_heads ranks, heads are copied, not split.
            kv = self.kv_cache_gb / (self.kv_replicated_from_tp * pp)
        return self.weights_gb / shards + kv + self.activation_gb + OVERHEAD_GB_PER_GPU


def check_precision(precision: str) -> str:
    key = precision.lower()
    if key not in PRECISION_BYTES:
        raise HpcragError(f"unknown precision {precision!r}; valid: {', '.join(PRECISION_BYTES)}")
    return key


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise HpcragError(f"{name} must be > 0, got {value}")


def plan_for_model(
    name: str,
    arch: ModelArch,
    precision: str,
    context: int,
    batch: int,
    kv_cache_dtype: str = "auto",
) -> MemoryPlan:
    precision = check_precision(precision)
    check_positive("context", context)
    check_positive("batch", batch)
    if kv_cache_dtype not in KV_DTYPE_BYTES:
        raise HpcragError(f"unknown KV cache dtype {kv_cache_dtype!r}; valid: {', '.join(KV_DTYPE_BYTES)}")
    if context > arch.max_context:
        raise HpcragError(
            f"context {context} is longer than {name}'s maximum of {arch.max_context} tokens; "
            f"ask for at most {arch.max_context}"
        )
    if arch.attention == "mla":
        assert arch.kv_lora_rank is not None and arch.rope_head_dim is not None
        elements = arch.layers * (arch.kv_lora_rank + arch.rope_head_dim)
        replicated_from: int | None = 1  # the latent is one "head": every TP rank keeps all of it
    else:
        assert arch.kv_heads is not None and arch.head_dim is not None
        elements = arch.layers * 2 * arch.kv_heads * arch.head_dim
        replicated_from = arch.kv_heads
    kv_per_token = elements * KV_DTYPE_BYTES[kv_cache_dtype]
    activation = (BATCHED_TOKENS * HIDDEN_VECTORS_PER_TOKEN * arch.hidden * 2 + batch * arch.vocab * 4) / GB
    return MemoryPlan(
        model=name,
        precision=precision,
        context=context,
        batch=batch,
        weights_gb=arch.params_b * 1e9 * PRECISION_BYTES[precision] / GB,
        kv_cache_gb=context * batch * kv_per_token / GB,
        kv_bytes_per_token=kv_per_token,
        activation_gb=activation,
        basis="architecture",
        kv_replicated_from_tp=replicated_from,
        heads=arch.heads,
    )


def plan_for_params(params_b: float, precision: str, context: int, batch: int) -> MemoryPlan:
    """The PRD's formula, for a model whose architecture is unknown."""
    precision = check_precision(precision)
    check_positive("params", params_b)
    check_positive("context", context)
    check_positive("batch", batch)
    weights = params_b * PRECISION_BYTES[precision]
    kv_per_token = params_b / 10 * 1e6
    return MemoryPlan(
        model=None,
        precision=precision,
        context=context,
        batch=batch,
        weights_gb=weights,
        kv_cache_gb=context * batch * kv_per_token / GB,
        kv_bytes_per_token=kv_per_token,
        activation_gb=0.15 * weights,
        basis="prd-formula",
        kv_replicated_from_tp=None,
        heads=None,
    )


def prd_formula_gb(params_b: float, precision: str, context: int, batch: int) -> float:
    """The PRD §6 estimate itself (its overhead is 3 GB for the whole replica)."""
    weights = params_b * PRECISION_BYTES[check_precision(precision)]
    return weights + context * batch * (params_b / 10 * 1e6) / GB + 0.15 * weights + 3.0
