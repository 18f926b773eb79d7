"""The command helper passes hostile arguments verbatim and reports failures completely."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hpcrag.config.schema import Site
from hpcrag.slurm.command import CommandError, run_command
from hpcrag.slurm.target import SlurmTarget, SlurmUnreachableError

HOSTILE = "a b 'quoted' \"double\" $HOME; rm -rf / `x`"


def test_arguments_reach_the_program_verbatim() -> None:
    out = run_command([sys.executable, "-c", "import sys; print(sys.argv[1])", HOSTILE]).stdout
    assert out == HOSTILE + "\n"


def test_failure_carries_command_code_stdout_and_stderr() -> None:
    code = "import sys; print('partial'); print('boom', file=sys.stderr); sys.exit(3)"
    with pytest.raises(CommandError) as info:
        run_command([sys.executable, "-c", code])
    err = info.value
    assert err.returncode == 3
    assert err.stdout == "partial\n"
    assert err.stderr == "boom\n"
    assert "exit code 3" in str(err) and "boom" in str(err) and sys.executable in str(err)


def test_missing_program_and_timeout() -> None:
    with pytest.raises(CommandError, match="no-such-tool-here is not installed"):
        run_command(["no-such-tool-here"])
    with pytest.raises(CommandError, match=r"timed out after 0\.2s"):
        run_command([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.2)


def test_env_is_added_not_replaced() -> None:
    out = run_command(
        [sys.executable, "-c", "import os; print(os.environ['X'], 'PATH' in os.environ)"], env={"X": HOSTILE}
    ).stdout
    assert out.split("\n")[0] == f"{HOSTILE} True"


def test_unreachable_slurm_is_a_clear_error(tmp_path: Path) -> None:
    conf = tmp_path / "no cluster" / "slurm.conf"
    target = SlurmTarget(site="nyc", cluster="nyc", slurm_conf=str(conf))
    with pytest.raises(SlurmUnreachableError, match=r"site nyc: Slurm (not reachable|client)"):
        target.sinfo()


def test_target_from_site_access(config_copy: Path) -> None:
    from hpcrag.config import load_config

    prod = SlurmTarget.for_site(load_config(config_copy, "production").site("sf"))
    assert prod.cluster_args == ["--clusters=sf"] and prod.env == {}
    dev = SlurmTarget.for_site(load_config(config_copy, "dev").site("sf"))
    assert dev.cluster_args == [] and dev.env == {"SLURM_CONF": "/var/tmp/hpcrag-dev/sf/slurm.conf"}
    assert isinstance(load_config(config_copy, "dev").site("sf"), Site)
