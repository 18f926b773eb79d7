"""`hpcrag index` as a user meets it: results files, one-line errors, exit codes, nothing half-written."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hpcrag.cli.main import cli
from hpcrag.search.synthetic import clustered

BASE, QUERIES = clustered(1200, 15, 12, clusters=5, seed=6)


def run(*args: str):
    return CliRunner().invoke(cli, ["index", *args])


def test_build_search_info(tmp_path: Path) -> None:
    np.save(tmp_path / "base.npy", BASE)
    np.save(tmp_path / "q.npy", QUERIES)
    index_dir = tmp_path / "my index"
    built = run("build", str(tmp_path / "base.npy"), "--out", str(index_dir), "--nlist", "8", "--shards", "2")
    assert built.exit_code == 0, built.output
    assert f"built {index_dir}: 1200 vectors, dim 12, ip, 8 lists, 2 shards" in built.output
    out = tmp_path / "result.npz"
    searched = run(
        "search", str(index_dir), "--queries", str(tmp_path / "q.npy"), "--k", "4", "--out", str(out)
    )
    assert searched.exit_code == 0, searched.output
    assert "15 queries, k=4, nprobe=1" in searched.output
    result = np.load(out)
    assert result["ids"].shape == (15, 4) and result["ids"].dtype == np.int64
    assert result["distances"].dtype == np.float32
    info = run("info", str(index_dir), "--json")
    assert json.loads(info.output)["shards"] == [
        {"shard": s, "vectors": json.loads((index_dir / "manifest.json").read_text())["shards"][s]["ntotal"]}
        for s in (0, 1)
    ]


def test_errors_are_one_line_and_leave_nothing(tmp_path: Path) -> None:
    bad = BASE.copy()
    bad[10, 1] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    failed = run(
        "build", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "out"), "--nlist", "8", "--shards", "2"
    )
    assert failed.exit_code == 1
    assert failed.output.strip() == "error: vectors row 10 holds NaN or inf; clean or drop it"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy"]
    missing = run("search", str(tmp_path / "nowhere"), "--queries", "q.npy", "--out", str(tmp_path / "r.npz"))
    assert missing.exit_code == 1 and "index directory not found" in missing.output
    assert "Traceback" not in missing.output


def test_search_refuses_a_bad_out_and_bad_queries(tmp_path: Path) -> None:
    np.save(tmp_path / "base.npy", BASE)
    run("build", str(tmp_path / "base.npy"), "--out", str(tmp_path / "idx"), "--nlist", "8", "--shards", "2")
    np.save(tmp_path / "q7.npy", np.ones((3, 7), dtype=np.float32))
    wrong_dim = run(
        "search",
        str(tmp_path / "idx"),
        "--queries",
        str(tmp_path / "q7.npy"),
        "--out",
        str(tmp_path / "r.npz"),
    )
    assert (
        wrong_dim.exit_code == 1 and "dimension 7 does not match the index dimension 12" in wrong_dim.output
    )
    np.save(tmp_path / "q.npy", QUERIES)
    bad_out = run(
        "search",
        str(tmp_path / "idx"),
        "--queries",
        str(tmp_path / "q.npy"),
        "--out",
        str(tmp_path / "r.txt"),
    )
    assert bad_out.exit_code == 1 and "must end in .npz" in bad_out.output
    bad_k = run(
        "search",
        str(tmp_path / "idx"),
        "--queries",
        str(tmp_path / "q.npy"),
        "--k",
        "0",
        "--out",
        str(tmp_path / "r.npz"),
    )
    assert bad_k.exit_code == 1 and "k must be >= 1, got 0" in bad_k.output
    assert not (tmp_path / "r.npz").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "Invalid value for '--port': 99999 is not in the range 0<=x<=65535"),
        (["--port", "-1"], "Invalid value for '--port'"),
        (["--max-queries", "0"], "Invalid value for '--max-queries'"),
        (["--max-body-mb", "0"], "Invalid value for '--max-body-mb'"),
    ],
)
def test_serve_refuses_bad_numbers_without_a_traceback(tmp_path: Path, args: list[str], message: str) -> None:
    result = run("serve", str(tmp_path), *args)
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_serve_refuses_what_would_leave_it_unusable_or_open(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HPCRAG_SEARCH_TOKEN", raising=False)
    no_way_in = run("serve", str(tmp_path))
    assert no_way_in.exit_code == 1
    assert "nobody could read the generated token: give --endpoint-file F" in no_way_in.output
    short = tmp_path / "token"
    short.write_text("abc\n")
    bad_token = run("serve", str(tmp_path), "--token-file", str(short))
    assert bad_token.exit_code == 1 and "must be at least 16 printable ASCII characters" in bad_token.output
    missing = run("serve", str(tmp_path), "--token-file", str(tmp_path / "nope"))
    assert missing.exit_code == 1 and "cannot be read (No such file or directory)" in missing.output
    monkeypatch.setenv("HPCRAG_SEARCH_TOKEN", "x" * 20)
    half_tls = run("serve", str(tmp_path), "--tls-cert", str(tmp_path / "c.pem"))
    assert half_tls.exit_code == 1 and "--tls-cert and --tls-key go together" in half_tls.output
    no_cert = run("serve", str(tmp_path), "--tls-cert", "c.pem", "--tls-key", "k.pem")
    assert no_cert.exit_code == 1 and "--tls-cert c.pem does not exist" in no_cert.output
    for result in (no_way_in, bad_token, missing, half_tls, no_cert):
        assert "Traceback" not in result.output


def test_serve_logs_no_token(tmp_path: Path) -> None:
    """aiohttp's pure-Python parser quotes an oversized header in its log line: the token in it must not
    reach the service's stderr."""
    np.save(tmp_path / "base.npy", BASE)
    built = run(
        "build", str(tmp_path / "base.npy"), "--out", str(tmp_path / "idx"), "--nlist", "8", "--shards", "1"
    )
    assert built.exit_code == 0, built.output
    token = "search-token-" + "s3cr3t" * 4
    (tmp_path / "token").write_text(token)
    endpoint = tmp_path / "endpoint.json"
    server = subprocess.Popen(
        [sys.executable, "-m", "hpcrag", "index", "serve", str(tmp_path / "idx"), "--port", "0",
         "--token-file", str(tmp_path / "token"), "--endpoint-file", str(endpoint)],
        env={**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        line = server.stdout.readline()
        assert "serving" in line, line + server.stderr.read()
        port = int(line.split(" on ")[1].split()[0].rsplit(":", 1)[1])
        request = b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode() + b"A" * 9000
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(request + b"\r\n\r\n")
            assert client.recv(100).split(b" ")[1] == b"400"
        time.sleep(0.3)
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
    assert "Got more than 8190 bytes" in stderr and "[REDACTED]" in stderr
    assert "s3cr3t" not in stderr


def test_query_files_and_index_paths_are_named_for_what_they_are(tmp_path: Path) -> None:
    np.save(tmp_path / "base.npy", BASE)
    run("build", str(tmp_path / "base.npy"), "--out", str(tmp_path / "idx"), "--nlist", "8", "--shards", "2")
    (tmp_path / "text.npy").write_text("not numbers\n")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    out = ["--out", str(tmp_path / "r.npz")]
    cases = {
        ("search", str(tmp_path / "idx"), "--queries", str(tmp_path / "absent.npy"), *out): (
            f"error: queries file not found: {tmp_path / 'absent.npy'}"
        ),
        ("search", str(tmp_path / "idx"), "--queries", str(tmp_path / "text.npy"), *out): (
            f"error: {tmp_path / 'text.npy'}: not a .npy file (no NumPy header); write arrays with numpy.save"
        ),
        ("search", str(tmp_path / "idx"), "--queries", str(tmp_path / "objects.npy"), *out): (
            f"error: {tmp_path / 'objects.npy'}: holds Python objects (an object-dtype array), not numbers; "
            "save a numeric array (vectors float32 or float16, ids int64) with numpy.save"
        ),
        ("search", str(tmp_path / "idx"), "--queries", str(tmp_path), *out): (
            f"error: {tmp_path} is a directory, not a queries file (.npy or .fvecs)"
        ),
        ("search", str(tmp_path / "base.npy"), "--queries", str(tmp_path / "base.npy"), *out): (
            f"error: {tmp_path / 'base.npy'} is a file, not an index directory: give the folder "
            "`index build --out` wrote"
        ),
    }
    for args, message in cases.items():
        result = run(*args)
        assert result.exit_code == 1 and result.output.strip() == message
    assert not (tmp_path / "r.npz").exists()
