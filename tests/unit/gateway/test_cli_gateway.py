"""`hpcrag gateway` from the command line: ports, key names and limits refused in one clear line, tables
that a terminal shows safely and in full, dollars with their significant digits, and a gateway process
that says the port it really bound and logs no key."""

from __future__ import annotations

import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcrag.cli.common import shown
from hpcrag.cli.main import cli
from hpcrag.util.money import money
from tests.conftest import CONFIG_DIR


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "HPCRAG_CONFIG_DIR": str(CONFIG_DIR),
        "HPCRAG_PROFILE": "dev",
        "HPCRAG_GATEWAY_DB": str(tmp_path / "gateway.sqlite"),
        "HPCRAG_REGISTRY": str(tmp_path / "registry.sqlite"),
        "COLUMNS": "80",
    }


@pytest.fixture
def run(env: dict[str, str]):
    def invoke(*args: str):
        return CliRunner().invoke(cli, list(args), env=env)

    return invoke


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ("99999", "99999 is out of range: ports are 1-65535, or 0 for a free port"),
        ("-1", "-1 is out of range"),
        ("65536", "65536 is out of range"),
        ("http", "'http' is not a port number"),
    ],
)
def test_serve_refuses_a_port_out_of_range(run, port: str, message: str) -> None:
    result = run("gateway", "serve", "--port", port)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Invalid value for '--port'" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["\udcff"], "error: invalid key name '\\udcff': key names are 1-64 characters"),
        ([""], "error: invalid key name '': key names are 1-64 characters"),
        (["a\nb"], "error: invalid key name 'a\\nb'"),
        (["a\x1b[2Jb"], "error: invalid key name 'a\\x1b[2Jb'"),
        (["a" * 65], "error: invalid key name 'aaaa"),
        (
            ["bot", "--rate", "1", "--burst", "-3"],
            "error: the burst must be a whole number of requests, 1 or more",
        ),
        (["bot", "--burst", "2"], "error: a burst applies to a rate limit: give --rate too"),
        (["bot", "--rate", "0"], "error: the rate limit must be a finite number above 0 requests/s, got 0.0"),
        (
            ["bot", "--rate", "nan"],
            "error: the rate limit must be a finite number above 0 requests/s, got nan",
        ),
        (
            ["bot", "--budget-usd", "nan"],
            "error: the daily budget must be 0 or more dollars (a finite number)",
        ),
        (
            ["bot", "--budget-usd", "inf"],
            "error: the daily budget must be 0 or more dollars (a finite number)",
        ),
        (["bot", "--budget-usd=-1"], "error: the daily budget must be 0 or more dollars (a finite number)"),
    ],
)
def test_keys_add_refuses_bad_input_in_one_line(run, args: list[str], message: str) -> None:
    result = run("gateway", "keys", "add", *args)
    assert result.exit_code == 1 and result.output.startswith(message), result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1
    assert run("gateway", "keys", "list", "--json").output.strip() == "[]"


def test_keys_list_escapes_what_an_older_version_stored(run, env: dict[str, str]) -> None:
    assert run("gateway", "keys", "add", "alice").exit_code == 0
    with sqlite3.connect(env["HPCRAG_GATEWAY_DB"]) as db:
        db.execute(
            "INSERT INTO api_keys (name, key_hash, user_tier, created_at) VALUES (?, 'h', ?, 0)",
            ("evil\x1b[2J\nname\u202e", "free\x07"),
        )
    result = run("gateway", "keys", "list")
    assert result.exit_code == 0, result.output
    assert "evil\\x1b[2J\\nname\\u202e" in result.output and "free\\x" in result.output
    assert not any(unicodedata.category(c) in {"Cc", "Cf"} for c in result.output.replace("\n", ""))


def test_tables_keep_names_whole_at_80_columns(run) -> None:
    names = ["research-team-batch-inference-key-0001", "research-team-batch-inference-key-0002"]
    for name in names:
        added = run("gateway", "keys", "add", name, "--compliance", "hipaa", "--budget-usd", "0.000001")
        assert added.exit_code == 0, added.output
    result = run("gateway", "keys", "list")
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    for name in names:
        assert name in result.output


def test_a_tiny_budget_prints_with_its_digits(run, env: dict[str, str]) -> None:
    assert run("gateway", "keys", "add", "tiny", "--budget-usd", "0.000001").exit_code == 0
    env["COLUMNS"] = "120"
    listed = run("gateway", "keys", "list").output
    assert "│ tiny │" in listed and "│ 0.000001 " in listed and "0.0000 " not in listed
    changed = run("gateway", "keys", "budget", "tiny", "0.0000025")
    assert changed.output == "tiny: daily budget $0.0000025\n"


@pytest.mark.parametrize(
    ("usd", "text"),
    [
        (None, "-"),
        (0.0, "0.00"),
        (0.000001, "0.000001"),
        (0.0000001, "0.0000001"),
        (0.0123456, "0.01235"),
        (0.5, "0.50"),
        (20.0, "20.00"),
        (1234.567, "1234.57"),
    ],
)
def test_money_keeps_significant_digits(usd: float | None, text: str) -> None:
    assert money(usd) == text


@settings(max_examples=200, deadline=1000)
@given(st.floats(min_value=1e-9, max_value=1e9))
def test_money_never_hides_a_non_zero_amount(usd: float) -> None:
    text = money(usd)
    assert float(text) == pytest.approx(usd, rel=1e-3, abs=0.005) and float(text) > 0
    assert math.isfinite(float(text)) and "e" not in text


@settings(max_examples=200, deadline=1000)
@given(st.text())
def test_shown_text_holds_nothing_a_terminal_acts_on(text: str) -> None:
    safe = shown(text)
    assert not any(unicodedata.category(c) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"} for c in safe)
    if all(c.isprintable() for c in text):
        assert safe == text


def test_serve_prints_the_port_it_bound_and_logs_no_key(env: dict[str, str], tmp_path: Path) -> None:
    """Port 0 asks for a free port: the line printed must name the one bound. With aiohttp's pure-Python
    parser (which quotes the header name and value), an oversized header and request line carrying a
    real key leave no trace of it on stderr."""
    full = {**os.environ, **env, "AIOHTTP_NO_EXTENSIONS": "1"}
    hpcrag = [sys.executable, "-m", "hpcrag"]
    added = subprocess.run(
        [*hpcrag, "gateway", "keys", "add", "alice"], env=full, capture_output=True, text=True
    )
    key = added.stdout.strip().encode()
    assert added.returncode == 0 and key.startswith(b"hpc-"), added.stderr
    server = subprocess.Popen(
        [*hpcrag, "gateway", "serve", "--host", "127.0.0.1", "--port", "0"],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()
        assert line.startswith("hpcrag gateway listening on http://127.0.0.1:"), line + server.stderr.read()
        port = int(line.split()[4].rsplit(":", 1)[1])
        assert port != 0 and httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        for request in (
            b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key + b"A" * 9000 + b"\r\n\r\n",
            b"GET /health?api_key=" + key + b"B" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                client.sendall(request)
                assert client.recv(100).split(b" ")[1] == b"400"
        time.sleep(0.3)
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    assert "Got more than 8190 bytes" in stderr and "[REDACTED]" in stderr
    assert key.decode() not in stderr and key[4:20].decode() not in stderr
