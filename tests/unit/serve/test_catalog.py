"""The catalogue against the PRD's tables and against memory figures computed by hand."""

from __future__ import annotations

import pytest

from hpcrag.catalog.matrix import cells
from hpcrag.catalog.memory import plan_for_model, plan_for_params, prd_formula_gb
from hpcrag.catalog.parallel import choose, precision_on
from hpcrag.catalog.select import select
from hpcrag.config import load_config
from hpcrag.errors import HpcragError
from tests.conftest import CONFIG_DIR

# PRD §4 "Feasibility Overview", copied symbol for symbol (columns B200 H200 H100 A100 L40S RTX 4090).
PRD_TABLES = {
    "hyperscaler": """
        S  ⚠️ ⚠️ ⚠️ ✓ ✅ ❌
        M  ✓ ✓ ✓ ✅ ✅ ❌
        L  ✅ ✅ ✅ ✓ ⚠️ ❌
        XL ✅ ✅ ✅ ⚠️ ❌ ❌""",
    "gpu-native": """
        S  ⚠️ ⚠️ ⚠️ ✓ ✅ ✅
        M  ✓ ✓ ✓ ✅ ✅ ⚠️
        L  ✅ ✅ ✅ ✓ ⚠️ ❌
        XL ✅ ✅ ✅ ⚠️ ❌ ❌""",
    "serverless": """
        S  ⚠️ ⚠️ ⚠️ ✓ ✅ ✅
        M  ✓ ✓ ✓ ✅ ✅ ⚠️
        L  ✅ ✅ ✅ ✓ ⚠️ ❌
        XL ✅ ✅ ❌ ❌ ❌ ❌""",
    "on-prem": """
        S  ⚠️ ⚠️ ⚠️ ✓ ✅ ✅
        M  ✓ ✓ ✓ ✅ ✅ ⚠️
        L  ✓ ✓ ✅ ✓ ⚠️ ❌
        XL ✓ ✓ ✅ ⚠️ ❌ ❌""",
}
SYMBOL = {"✅": "recommended", "✓": "viable", "⚠️": "marginal", "❌": "not-recommended"}
GPUS = ["b200", "h200", "h100", "a100", "l40s", "rtx4090"]


@pytest.fixture(scope="module")
def config():
    return load_config(CONFIG_DIR, "production")


def test_matrix_reproduces_every_prd_cell(config) -> None:
    expected = {}
    for level, text in PRD_TABLES.items():
        for line in text.strip().splitlines():
            tier, *symbols = line.split()
            for gpu, symbol in zip(GPUS, symbols, strict=True):
                expected[(level, tier.lower(), gpu)] = SYMBOL[symbol]
    got = {(c.infra, c.tier, c.gpu): c.rating for c in cells(config)}
    assert len(got) == 96
    assert got == expected
    assert len(cells(config, "serverless")) == 24
    with pytest.raises(HpcragError, match="unknown infrastructure level 'moon'; valid"):
        cells(config, "moon")


def test_kv_cache_and_weights_from_the_architecture(config) -> None:
    # Llama-3.1-8B: 32 layers x 2 (K, V) x 8 KV heads x 128 x 2 bytes = 131072 bytes per token.
    plan = plan_for_model("llama-3.1-8b-instruct", config.model("llama-3.1-8b-instruct"), "fp16", 8192, 16)
    assert plan.kv_bytes_per_token == 131072
    assert plan.kv_cache_gb == pytest.approx(8192 * 16 * 131072 / 1e9)  # 17.18 GB
    assert plan.weights_gb == pytest.approx(16.06)
    # Activations: 8192 batched tokens x 12 x 4096 x 2 bytes + 16 x 128256 x 4 bytes of logits.
    assert plan.activation_gb == pytest.approx((8192 * 12 * 4096 * 2 + 16 * 128256 * 4) / 1e9)
    # DeepSeek-V3 (MLA): 61 layers x (512 + 64) x 2 bytes = 70272 bytes per token, whatever the heads.
    mla = plan_for_model("deepseek-v3", config.model("deepseek-v3"), "fp8", 1000, 1)
    assert mla.kv_bytes_per_token == 61 * 576 * 2
    assert mla.weights_gb == pytest.approx(671)
    # Without an architecture the PRD's own formula is used, and says so.
    rough = plan_for_params(70, "fp8", 16384, 8)
    assert rough.basis == "prd-formula"
    assert rough.total_gb == pytest.approx(prd_formula_gb(70, "fp8", 16384, 8) - 3.0 + 2.0)


@pytest.mark.parametrize(
    ("model", "precision", "context", "batch", "gpu", "tp", "per_gpu_gb"),
    [
        # 70.55 GB fp8 weights + 42.95 GB KV (80 x 2 x 8 x 128 x 2 B x 131072 tokens) split over 2,
        # + 1.61 GB activations + 2 GB overhead = 60.36 GB <= 80 x 0.92.
        ("llama-3.1-70b-instruct", "fp8", 16384, 8, "h100", 2, 60.36),
        # A100 has no FP8: fp16 weights 141.1 GB -> 4 GPUs: 35.28 + 10.74 + 3.61 = 49.63 GB.
        ("llama-3.1-70b-instruct", "fp8", 16384, 8, "a100", 4, 49.63),
        ("llama-3.1-70b-instruct", "fp8", 16384, 8, "b200", 1, 117.11),
        # 405B fp8 on 8 H100: 50.73 weights + 8.46 KV (67.65 / 8) + 3.22 activations + 2 = 64.41 GB.
        ("llama-3.1-405b-instruct", "fp8", 32768, 4, "h100", 8, 64.41),
        # ... on 4 B200: 101.46 + 16.91 + 3.22 + 2 = 123.60 GB.
        ("llama-3.1-405b-instruct", "fp8", 32768, 4, "b200", 4, 123.60),
        ("llama-3.1-8b-instruct", "fp16", 8192, 16, "l40s", 1, 36.06),
        # Qwen2.5-3B AWQ: 1.55 weights + 4.83 KV (36 x 2 x 2 x 128 x 2 B x 131072) + 0.42 + 2 = 8.80 GB.
        ("qwen2.5-3b-instruct", "awq", 4096, 32, "rtx4090", 1, 8.80),
    ],
)
def test_tensor_parallel_choice(config, model, precision, context, batch, gpu, tp, per_gpu_gb) -> None:
    gpu_type = config.gpu(gpu)
    used, _ = precision_on(precision, gpu, gpu_type)
    plan = plan_for_model(model, config.model(model), used, context, batch)
    layout = choose(plan, gpu, gpu_type, 0.92)
    assert layout is not None
    assert (layout.tp, layout.pp) == (tp, 1)
    assert layout.per_gpu_gb == pytest.approx(per_gpu_gb, abs=0.01)
    assert layout.per_gpu_gb <= gpu_type.vram_gb * 0.92


def test_kv_heads_are_copied_past_their_number(config) -> None:
    # Qwen2.5-3B has 2 KV heads: at TP=4 each GPU still holds a whole head, half of the cache.
    plan = plan_for_model("qwen2.5-3b-instruct", config.model("qwen2.5-3b-instruct"), "fp16", 32768, 64)
    at_two, at_four = plan.per_gpu_gb(2), plan.per_gpu_gb(4)
    assert at_two - at_four == pytest.approx(plan.weights_gb / 4)


def test_memory_input_errors(config) -> None:
    arch = config.model("llama-3.1-8b-instruct")
    with pytest.raises(HpcragError, match="unknown precision 'fp7'; valid: fp32"):
        plan_for_model("llama-3.1-8b-instruct", arch, "fp7", 1024, 1)
    with pytest.raises(HpcragError, match=r"context 200000 is longer than .* maximum of 131072"):
        plan_for_model("llama-3.1-8b-instruct", arch, "fp16", 200000, 1)
    with pytest.raises(HpcragError, match="batch must be > 0"):
        plan_for_model("llama-3.1-8b-instruct", arch, "fp16", 1024, 0)
    with pytest.raises(HpcragError, match="unknown model 'gpt-9'; valid models:"):
        config.model("gpt-9")


def test_selection_follows_compliance_latency_and_budget(config) -> None:
    hipaa = select(config, "complex", 1000, 0.05, ["hipaa"])
    assert hipaa.chosen is not None and hipaa.chosen.infra == "on-prem"
    assert {c.infra for c in hipaa.ranked} <= {"on-prem", "hyperscaler"}
    assert any("gpu-native does not fully meet hipaa" in r.reason for r in hipaa.rejected)
    gapped = select(config, "simple", 500, 1.0, ["air-gapped"])
    assert {c.infra for c in gapped.ranked} == {"on-prem"}
    assert gapped.chosen is not None and gapped.chosen.rating == "recommended"
    only_a100 = select(config, "moderate", 1000, 1.0, [], ["a100"])
    assert {c.gpu for c in only_a100.ranked} == {"a100"}
    assert only_a100.chosen is not None and only_a100.chosen.precision == "fp16"  # no FP8 on A100
    broke = select(config, "frontier", 2000, 0.0001)
    assert broke.chosen is None and broke.rejected
    assert all(c.usd_per_1k_tokens <= 0.05 for c in hipaa.ranked)
    with pytest.raises(
        HpcragError, match="unknown compliance requirement 'hipa'; known: air-gapped, fedramp"
    ):
        select(config, "simple", 100, 1.0, ["hipa"])
    with pytest.raises(HpcragError, match="unknown complexity 'easy'"):
        select(config, "easy", 100, 1.0)
