"""`hpcrag cost report` prints small dollar amounts with their significant digits, never as 0.0000."""

from __future__ import annotations

import time
from pathlib import Path

from click.testing import CliRunner

from hpcrag.cli.main import cli
from hpcrag.cost.ledger import Ledger
from tests.conftest import CONFIG_DIR
from tests.unit.cost.test_cost import record


def test_report_shows_a_millionth_of_a_dollar(tmp_path: Path) -> None:
    env = {
        "HPCRAG_CONFIG_DIR": str(CONFIG_DIR),
        "HPCRAG_PROFILE": "dev",
        "HPCRAG_GATEWAY_DB": str(tmp_path / "gateway.sqlite"),
        "HPCRAG_REGISTRY": str(tmp_path / "registry.sqlite"),
        "COLUMNS": "120",
    }
    Ledger(env["HPCRAG_GATEWAY_DB"]).insert(
        [record("alice", "s", "slurm", 1, 1, 0.000001, started_at=time.time())]
    )
    result = CliRunner().invoke(cli, ["cost", "report", "--by", "key"], env=env)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "alice" in line)
    assert [cell.strip() for cell in row.split("│")[1:5]] == ["alice", "1", "2", "0.000001"]
    assert "0.0005" in row  # $/1K tokens: 0.000001 $ over 2 tokens
