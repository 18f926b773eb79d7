"""`hpcrag plan` and `hpcrag serve` from the command line: JSON for scripts, one clear line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpcrag.cli.main import cli
from tests.conftest import CONFIG_DIR


@pytest.fixture
def run(tmp_path: Path):
    env = {
        "HPCRAG_CONFIG_DIR": str(CONFIG_DIR),
        "HPCRAG_PROFILE": "dev",
        "HPCRAG_REGISTRY": str(tmp_path / "serving.sqlite"),
    }

    def invoke(*args: str):
        return CliRunner().invoke(cli, list(args), env=env)

    return invoke


def test_plan_matrix_json_has_all_96_cells(run) -> None:
    result = run("plan", "matrix", "--json")
    assert result.exit_code == 0, result.output
    cells = json.loads(result.output)
    assert len(cells) == 96
    assert {"infra": "serverless", "tier": "xl", "gpu": "h100", "rating": "not-recommended"} in cells
    human = run("plan", "matrix", "--infra", "on-prem")
    assert human.exit_code == 0 and "On-Premises / Colocation" in human.output and "✅" in human.output


def test_plan_memory_and_select(run) -> None:
    result = run(
        "plan", "memory", "--model", "llama-3.1-70b-instruct", "--precision", "fp8", "--tier", "l", "--json"
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["kv_bytes_per_token"] == 327680 and plan["basis"] == "architecture"
    layouts = {p["gpu"]: (p["tp"], p["precision"]) for p in plan["parallelism"]}
    assert layouts["h100"] == (2, "fp8") and layouts["a100"] == (4, "fp16")
    rough = run("plan", "memory", "--params", "13", "--context", "2048", "--batch", "4")
    assert rough.exit_code == 0 and "prd-formula" in rough.output
    chosen = run(
        "--profile",
        "production",
        "plan",
        "select",
        "--complexity",
        "complex",
        "--latency-ms",
        "1000",
        "--budget",
        "0.05",
        "--compliance",
        "hipaa",
        "--json",
    )
    assert chosen.exit_code == 0, chosen.output
    assert json.loads(chosen.output)["chosen"]["infra"] == "on-prem"


def test_serve_up_dry_run_prints_the_spec(run) -> None:
    result = run("serve", "up", "--site", "nyc", "--tier", "s", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    spec = json.loads(result.output)
    assert (spec["partition"], spec["gpu_type"], spec["tp"], spec["model"]) == (
        "tier-s",
        "l40s",
        1,
        "tiny-llama",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--site", "nyc", "--tier", "xxl"], "error: unknown tier 'xxl'; valid tiers: s, m, l, xl"),
        (["--site", "tokyo", "--tier", "s"], "error: unknown site 'tokyo'; valid sites: nyc, sf"),
        (
            ["--site", "nyc", "--tier", "s", "--gpu", "b200"],
            "error: unknown GPU type 'b200' on partition nyc/tier-s",
        ),
        (["--site", "nyc", "--tier", "s", "--model", "gpt-9"], "error: unknown model 'gpt-9'"),
        (
            ["--site", "nyc", "--tier", "s", "--model", "deepseek-v3"],
            "error: deepseek-v3 does not fit on any GPU",
        ),
        (["--site", "nyc", "--tier", "s", "--replicas", "0"], "error: replicas must be >= 1, got 0"),
    ],
)
def test_serve_up_refuses_bad_input_before_submitting(run, tmp_path: Path, args, message) -> None:
    result = run("serve", "up", *args)
    assert result.exit_code == 1
    assert result.output.startswith(message), result.output
    assert "Traceback" not in result.output
    status = run("serve", "status", "--all", "--json")
    assert status.exit_code == 0 and json.loads(status.output) == []


def test_serve_down_needs_a_selection(run) -> None:
    result = run("serve", "down")
    assert result.exit_code == 1 and "name endpoints by id, or use --site/--tier, or --all" in result.output
    missing = run("serve", "logs", "7")
    assert missing.exit_code == 1 and "no endpoint with id 7" in missing.output


def test_status_with_an_unreachable_site_still_shows_the_registry(config_copy: Path, tmp_path: Path) -> None:
    from hpcrag.serve.registry import Endpoint, Registry

    profile = config_copy / "profiles" / "dev.yaml"
    profile.write_text(
        profile.read_text().replace("run_dir: /var/tmp/hpcrag-dev", f"run_dir: {tmp_path}/nowhere")
    )
    registry = tmp_path / "serving.sqlite"
    Registry(registry).add(
        Endpoint(
            provider="slurm",
            site="nyc",
            job_id="100001",
            tier="s",
            model="m",
            served_name="m",
            state="healthy",
            secret="the-per-job-key",
        )
    )
    env = {"HPCRAG_CONFIG_DIR": str(config_copy), "HPCRAG_PROFILE": "dev", "HPCRAG_REGISTRY": str(registry)}
    result = CliRunner().invoke(cli, ["serve", "status"], env=env)
    assert result.exit_code == 0, result.output
    assert "site nyc: Slurm not reachable; its rows show the registry's last word" in result.output
    shown = CliRunner().invoke(cli, ["serve", "status", "--json"], env=env).output
    assert "the-per-job-key" not in shown and "secret" not in shown  # only the gateway reads it
    rows = json.loads(shown)
    assert [(r["job_id"], r["state"], r["slurm_state"]) for r in rows] == [
        ("100001", "healthy", "UNREACHABLE")
    ]


def test_plain_status_with_no_live_server_says_that_all_shows_ended_ones(run, tmp_path: Path) -> None:
    plain = run("serve", "status")
    assert plain.exit_code == 0, plain.output
    assert plain.output == "no live servers; `hpcrag serve status --all` also shows servers that have ended\n"
    assert run("serve", "status", "--all").output == "no servers registered\n"
    assert run("serve", "status", "--site", "sf").output.startswith("no live servers at sf; ")
