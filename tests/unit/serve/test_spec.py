"""Launch specs: sizing, vLLM arguments per environment, and every refusal before submission."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from hpcrag.config import load_config
from hpcrag.errors import HpcragError
from hpcrag.serve.launcher import partition_minutes, priority_parameters
from hpcrag.serve.runtime import VllmEnvironmentError
from hpcrag.serve.spec import ModelDoesNotFitError, build_spec
from tests.conftest import CONFIG_DIR, REPO


@pytest.fixture(scope="module")
def production():
    return load_config(CONFIG_DIR, "production")


@pytest.fixture(scope="module")
def dev():
    return load_config(CONFIG_DIR, "dev")


def test_dev_spec_runs_the_tiny_model_with_vllm_cpu(dev) -> None:
    spec = build_spec(dev, "nyc", "S")
    assert (spec.tier, spec.partition, spec.model, spec.gpu_type, spec.tp) == (
        "s",
        "tier-s",
        "tiny-llama",
        "l40s",
        1,
    )
    assert spec.argv[:3] == [str(REPO / ".venv-vllm/bin/python"), "-m", "vllm.entrypoints.openai.api_server"]
    args = spec.argv[3:]
    assert args[args.index("--model") + 1] == str(REPO / ".run/tiny-llama")
    assert args[args.index("--max-model-len") + 1] == "3072"  # the model's own limit, below the tier's 4096
    assert "--enable-prefix-caching" in args and "--enable-chunked-prefill" in args
    assert "--tensor-parallel-size" not in args  # a CPU build
    assert args[-4:] == ["--dtype", "float32", "--middleware", "hpcrag_vllm_auth.RequireKey"]
    assert spec.env == {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    assert spec.usd_per_hour == 0.45
    assert (spec.bind, spec.certfile, spec.scheme) == (None, None, "http")
    assert spec.argv_with_port("0.0.0.0", 8123)[-4:] == ["--host", "0.0.0.0", "--port", "8123"]


def test_production_specs_follow_the_prd_deployments(production) -> None:
    s = build_spec(production, "nyc", "s")
    assert s.argv[:2] == ["bash", "-c"]
    assert s.argv[2].startswith("module load cuda/12.4 && module load vllm/0.6.4 && exec python3 -m vllm.")
    assert "--model Qwen/Qwen2.5-3B-Instruct" in s.argv[2] and "--gpu-memory-utilization 0.92" in s.argv[2]
    large = build_spec(production, "sf", "l")
    side = f"{REPO}/src/hpcrag/serve/vllm_side"
    assert large.argv[:6] == [
        "apptainer",
        "exec",
        "--nv",
        "--bind",
        f"{side}:{side}:ro",
        "docker://vllm/vllm-openai:v0.6.4",
    ]
    assert large.argv[-2:] == ["--middleware", "hpcrag_vllm_auth.RequireKey"]
    assert s.argv[2].endswith(" --middleware hpcrag_vllm_auth.RequireKey")
    assert (large.gpu_type, large.precision, large.tp) == ("h100", "bf16", 4)
    assert large.env["NCCL_P2P_LEVEL"] == "NVL"
    fp8 = build_spec(production, "sf", "l", precision="fp8")
    assert (fp8.tp, fp8.argv[fp8.argv.index("--quantization") + 1]) == (2, "fp8")
    assert fp8.usd_per_hour == pytest.approx(2 * 0.85)
    xl = build_spec(production, "nyc", "xl")
    assert (xl.precision, xl.tp, xl.gpus) == ("fp8", 8, 8)
    # A100 has no FP8: asking for it on an A100 plans fp16 and says so.
    a100 = build_spec(production, "nyc", "m", gpu_type="a100", precision="fp8")
    assert a100.precision == "fp16" and "no FP8" in a100.notes[0]


def test_bad_input_is_refused_before_submission(production, config_copy: Path) -> None:
    with pytest.raises(HpcragError, match="unknown tier 'xxl'; valid tiers: s, m, l, xl"):
        build_spec(production, "nyc", "xxl")
    with pytest.raises(HpcragError, match="unknown site 'tokyo'; valid sites: nyc, sf"):
        build_spec(production, "tokyo", "s")
    with pytest.raises(
        HpcragError, match="unknown GPU type 'h100' on partition nyc/tier-s; valid GPU types: l40s"
    ):
        build_spec(production, "nyc", "s", gpu_type="h100")
    with pytest.raises(HpcragError, match="unknown model 'gpt-9'"):
        build_spec(production, "nyc", "s", model="gpt-9")
    # 671B parameters: even AWQ weights on 8 L40S leave no room.
    with pytest.raises(
        ModelDoesNotFitError, match="deepseek-v3 does not fit on any GPU of partition nyc/tier-s"
    ):
        build_spec(production, "nyc", "s", model="deepseek-v3")
    with pytest.raises(HpcragError, match="unknown precision 'fp7'"):
        build_spec(production, "nyc", "s", precision="fp7")
    # The copy sits outside the repository, so the dev profile's .venv-vllm is not there.
    with pytest.raises(
        VllmEnvironmentError, match=r"vLLM interpreter .*\.venv-vllm/bin/python does not exist"
    ):
        build_spec(load_config(config_copy, "dev"), "nyc", "s")
    site = config_copy / "sites" / "sf.yaml"
    site.write_text(site.read_text().split("# How vLLM runs here")[0])
    with pytest.raises(VllmEnvironmentError, match="site sf has no vLLM environment: add a 'vllm:' block"):
        build_spec(load_config(config_copy, "production"), "sf", "s")


def test_priorities_and_time_limits(production, dev) -> None:
    assert priority_parameters(production, "production-critical") == {"qos": "production-critical"}
    assert priority_parameters(dev, "development") == {"additional_parameters": {"nice": 10000}}
    with pytest.raises(HpcragError, match="unknown priority 'urgent'; valid priorities"):
        priority_parameters(dev, "urgent")
    assert [
        partition_minutes(t) for t in ("4:00:00", "72:00:00", "1-00:00:00", "90", "2-12", "UNLIMITED")
    ] == [
        240,
        4320,
        1440,
        90,
        3600,
        None,
    ]


def _site_vllm(config_copy: Path, extra: str) -> None:
    """Give the dev profile's vLLM block (which every site takes) some more lines."""
    profile = config_copy / "profiles" / "dev.yaml"
    text = profile.read_text().replace(".venv-vllm/bin/python", str(REPO / ".venv-vllm/bin/python"))
    profile.write_text(text.replace("  env: {VLLM_CPU", f"{extra}  env: {{VLLM_CPU"))


def test_the_site_says_where_vllm_listens_and_with_which_certificate(
    config_copy: Path, tmp_path: Path
) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("node7.example.org")
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    _site_vllm(
        config_copy,
        f"  bind: 0.0.0.0\n  tls: {{certfile: {tmp_path / 'cert.pem'}, keyfile: {tmp_path / 'key.pem'}}}\n",
    )
    spec = build_spec(load_config(config_copy, "dev"), "nyc", "s")
    assert (spec.bind, spec.scheme) == ("0.0.0.0", "https")
    assert spec.argv_with_port("0.0.0.0", 9)[-8:] == [
        "--host", "0.0.0.0", "--port", "9",
        "--ssl-certfile", str(tmp_path / "cert.pem"), "--ssl-keyfile", str(tmp_path / "key.pem"),
    ]  # fmt: skip
    # A key that is not the certificate's is refused before anything is submitted.
    ca.issue_cert("other").private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    with pytest.raises(VllmEnvironmentError, match=r"site nyc, vllm.tls: .*key\.pem does not belong to"):
        build_spec(load_config(config_copy, "dev"), "nyc", "s")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  bind: 'http://0.0.0.0'\n", "bind 'http://0.0.0.0' is not an address or host name"),
        ("  bind: ''\n", "bind '' is not an address or host name"),
        ("  tls: {certfile: c.pem}\n", "keyfile"),
    ],
)
def test_bad_serving_settings_name_the_fix(config_copy: Path, extra: str, message: str) -> None:
    _site_vllm(config_copy, extra)
    with pytest.raises(HpcragError, match=message):
        load_config(config_copy, "dev")


def test_vllm_args_cannot_take_what_the_supervisor_sets(config_copy: Path) -> None:
    profile = config_copy / "profiles" / "dev.yaml"
    profile.write_text(
        profile.read_text().replace("args: [--dtype, float32]", "args: [--api-key=x, --host, h]")
    )
    with pytest.raises(HpcragError, match="args must not set --api-key, --host: the supervisor sets"):
        load_config(config_copy, "dev")
