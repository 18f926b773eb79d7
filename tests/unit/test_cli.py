"""The CLI starts without heavy imports, answers bad input with one clear line, and prints JSON."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from hpcrag.cli.main import cli
from tests.conftest import CONFIG_DIR

ENV = {"HPCRAG_CONFIG_DIR": str(CONFIG_DIR), "HPCRAG_PROFILE": "dev"}


def run(*args: str):
    return CliRunner().invoke(cli, list(args), env=ENV)


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys; from hpcrag.cli.main import cli\n"
        "heavy = [m for m in ('numpy', 'pydantic', 'submitit', 'yaml', 'mpi4py', 'faiss', 'numba', 'rich')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
    assert run("--help").exit_code == 0


def test_sites_list_json() -> None:
    result = run("sites", "list", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["profile"] == "dev"
    nyc = next(s for s in data["sites"] if s["site"] == "nyc")
    assert nyc["gpus"] == {"h100": 32, "a100": 16, "l40s": 16}
    assert nyc["access"] == "SLURM_CONF=/var/tmp/hpcrag-dev/nyc/slurm.conf"


def test_sites_show_and_validate() -> None:
    result = run("sites", "show", "sf", "--json")
    assert json.loads(result.output)["slurm"]["cluster_name"] == "sf"
    result = run("sites", "validate")
    assert result.exit_code == 0 and "ok:" in result.output and "profiles: dev, production" in result.output


def test_slurm_conf_is_printed_and_written_atomically(tmp_path) -> None:
    result = run("--profile", "production", "sites", "slurm-conf", "nyc")
    assert "PartitionName=tier-xl Nodes=node[1-4] Default=NO MaxTime=72:00:00 State=UP" in result.output
    out = tmp_path / "conf 'dir'"
    result = run("sites", "slurm-conf", "sf", "-o", str(out))
    assert result.exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["gres.conf", "slurm.conf"]


def test_unknown_site_is_one_clear_line() -> None:
    result = run("sites", "show", "tokyo")
    assert result.exit_code == 1
    assert result.output.strip() == "error: unknown site 'tokyo'; valid sites: nyc, sf"


def test_malformed_config_is_reported_by_file(config_copy) -> None:
    (config_copy / "clouds.yaml").write_text("tiers: [\n")
    result = CliRunner().invoke(cli, ["--config-dir", str(config_copy), "sites", "list"])
    assert result.exit_code == 1
    assert "clouds.yaml: malformed YAML at line" in result.output
