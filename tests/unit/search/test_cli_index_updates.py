"""`hpcrag index add|upsert|delete|compact|info` and `search --filter` as a user meets them: what they
print, their exit codes, one-line errors that name the problem, and nothing changed by a refused call."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hpcrag.cli.main import cli
from hpcrag.search.synthetic import clustered
from hpcrag.search.wal import LOG

BASE, QUERIES = clustered(1200, 15, 12, clusters=5, seed=6)


def run(*args: str):
    return CliRunner().invoke(cli, ["index", *args])


@pytest.fixture
def index(tmp_path: Path) -> Path:
    np.save(tmp_path / "base.npy", BASE)
    root = tmp_path / "an index"
    built = run("build", str(tmp_path / "base.npy"), "--out", str(root), "--nlist", "8", "--shards", "2")
    assert built.exit_code == 0, built.output
    np.save(tmp_path / "new.npy", BASE[:20] + 0.01)
    np.save(tmp_path / "ids.npy", np.arange(5000, 5020))
    (tmp_path / "attrs.jsonl").write_text(
        "".join(json.dumps({"source": "faq" if i % 2 else "man", "year": 2000 + i}) + "\n" for i in range(20))
    )
    return root


def test_add_upsert_delete_filter_info_compact(tmp_path: Path, index: Path) -> None:
    new, ids, attrs = (str(tmp_path / name) for name in ("new.npy", "ids.npy", "attrs.jsonl"))
    added = run("add", str(index), "--vectors", new, "--ids", ids, "--attributes", attrs)
    assert added.exit_code == 0, added.output
    assert (
        "add: 20 new and 0 replaced vectors" in added.output
        and "declared source:str, year:int" in added.output
    )
    again = run("add", str(index), "--vectors", new, "--ids", ids)
    assert again.exit_code == 1 and "20 ids are already in the index (first: [5000" in again.output
    assert "use upsert" in again.output
    upserted = run("upsert", str(index), "--vectors", new, "--ids", ids, "--attributes", attrs, "--json")
    assert upserted.exit_code == 0 and json.loads(upserted.output)["replaced"] == 20
    deleted = run("delete", str(index), "--id", "5000", "--id", "77777")
    assert "deleted 1 vectors" in deleted.output and "1 ids were not in the index (77777)" in deleted.output
    strict = run("delete", str(index), "--id", "5001", "--id", "77777", "--strict")
    assert strict.exit_code == 1 and "nothing was deleted" in strict.output

    np.save(tmp_path / "q.npy", BASE[:4] + 0.01)
    out = tmp_path / "r.npz"
    searched = run(
        "search", str(index), "--queries", str(tmp_path / "q.npy"), "--k", "3", "--nprobe", "2",
        "--out", str(out), "--filter", "source=faq", "--filter", "year>=2003",
    )  # fmt: skip
    assert searched.exit_code == 0, searched.output
    assert 'filter source = "faq" and year >= 2003, exact scan' in searched.output
    found = np.load(out)["ids"]
    assert set(found[found >= 0].tolist()) <= {5000 + i for i in range(3, 20, 2)}
    assert found[3, 0] == 5003

    info = run("info", str(index))
    assert "attributes: source:str, year:int" in info.output and "3 updates logged" in info.output
    assert ": 1200 vectors in the shards (and 3 updates logged since, below), dim" in info.output
    compacted = run("compact", str(index))
    assert compacted.exit_code == 0, compacted.output
    assert "compacted" in compacted.output and "up to update #3: 1219 vectors" in compacted.output
    assert "centroids:" in compacted.output
    assert "updates logged" not in run("info", str(index)).output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "--vectors", "{new}"], "--ids is required"),
        (
            ["add", "--vectors", "{bad_dim}", "--ids", "{ids}"],
            "dimension 5 does not match the index dimension 12",
        ),
        (["add", "--vectors", "{nan}", "--ids", "{ids}"], "vectors row 3 holds NaN or inf"),
        (["add", "--vectors", "{new}", "--ids", "{ids}", "--attributes", "{bad_jsonl}"], "line 2"),
        (["add", "--vectors", "{new}", "--ids", "{ids}", "--attribute", "year:date"], "year"),
        (["delete"], "no ids given"),
        (
            ["search", "--queries", "{new}", "--out", "{out}", "--filter", "nosuch=1"],
            'unknown attribute "nosuch"',
        ),
    ],
)
def test_refused_calls_name_the_problem_and_change_nothing(
    tmp_path: Path, index: Path, args: list[str], message: str
) -> None:
    np.save(tmp_path / "bad_dim.npy", np.ones((20, 5), np.float32))
    nan = np.array(BASE[:20], dtype=np.float32)
    nan[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{"a": \n' + '{"a": 1}\n' * 18)
    paths = {
        "new": tmp_path / "new.npy", "ids": tmp_path / "ids.npy", "bad_dim": tmp_path / "bad_dim.npy",
        "nan": tmp_path / "nan.npy", "bad_jsonl": tmp_path / "bad.jsonl", "out": tmp_path / "r.npz",
    }  # fmt: skip
    command, *rest = args
    result = run(command, str(index), *(a.format(**{k: str(v) for k, v in paths.items()}) for a in rest))
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert not (index / LOG).exists(), "a refused call must not write to the log"


def test_build_with_attributes_then_filter(tmp_path: Path) -> None:
    np.save(tmp_path / "base.npy", BASE)
    np.save(tmp_path / "q.npy", BASE[:2])
    rows = [{"tenant": f"t{i % 3}", "day": "2024-01-0" + str(1 + i % 9)} for i in range(len(BASE))]
    (tmp_path / "attrs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    root = tmp_path / "index"
    built = run(
        "build", str(tmp_path / "base.npy"), "--out", str(root), "--nlist", "8", "--shards", "2",
        "--attributes", str(tmp_path / "attrs.jsonl"), "--attribute", "day:str",
    )  # fmt: skip
    assert built.exit_code == 0, built.output
    assert "attributes day:str, tenant:str" in built.output, "declared types win over inferred ones"
    out = tmp_path / "r.npz"
    searched = run(
        "search", str(root), "--queries", str(tmp_path / "q.npy"), "--k", "5", "--nprobe", "8",
        "--out", str(out), "--filter", "tenant=t1", "--strategy", "exact",
    )  # fmt: skip
    assert searched.exit_code == 0, searched.output
    found = np.load(out)["ids"]
    assert found.shape == (2, 5) and (found % 3 == 1).all(), "only tenant t1"
    short = run(
        "build", str(tmp_path / "base.npy"), "--out", str(tmp_path / "other"), "--nlist", "8",
        "--shards", "2", "--attributes", str(tmp_path / "q.npy"),
    )  # fmt: skip
    assert short.exit_code == 1 and "is not UTF-8 text; save it as UTF-8 JSON Lines" in short.output.replace(
        " (invalid start byte)", ""
    )
    assert not (tmp_path / "other").exists()
