"""`hpcrag rag` as a user meets it: ingest counts, JSON for scripts, one-line errors that change nothing.

Every test points $HPCRAG_RAG_DIR into its own temporary folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from hpcrag.rag.collection import Collection
from tests.unit.rag.conftest import CORPUS, CORPUS_CHUNKS, snapshot, write_docs

EMBEDDER = "local:all-MiniLM-L6-v2:384:256"


def rag(root: Path, *args: str) -> Result:
    from hpcrag.cli.main import cli

    return CliRunner().invoke(cli, ["rag", *args], env={"HPCRAG_RAG_DIR": str(root), "HPCRAG_API_KEY": ""})


def retrieved(root: Path, *args: str) -> list[dict]:
    result = rag(root, "query", *args, "--retrieve-only", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["sources"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, embedder) -> tuple[Path, Path]:
    """(collections root, corpus folder) of a collection `docs` that the tests below only read."""
    folder = write_docs(tmp_path_factory.mktemp("corpus"), CORPUS)
    root = tmp_path_factory.mktemp("rag")
    result = rag(root, "ingest", "docs", str(folder), "--no-progress")
    assert result.exit_code == 0, result.output
    return root, folder


def test_ingest_names_the_counts_and_list_shows_the_collection(tmp_path: Path, docs, embedder) -> None:
    folder = docs()
    root = tmp_path / "rag"
    first = rag(root, "ingest", "docs", str(folder))
    assert first.exit_code == 0, first.output
    lines = first.output.splitlines()
    assert lines[0] == f"dense index: {CORPUS_CHUNKS} chunks in 2 lists over 2 shards (1 ranks)"
    assert lines[1:4] == [
        f"collection docs: generation 1, 4 documents, {CORPUS_CHUNKS} chunks",
        "  added 4, replaced 0, removed 0, unchanged 0",
        f"  chunks: {CORPUS_CHUNKS} new, {CORPUS_CHUNKS} embedded, 0 from the cache",
    ]
    assert lines[4].startswith("  chunks/s: whole ingest ")
    assert (
        "  note: tier S asks for 256-token chunks but local:all-MiniLM-L6-v2:384:256 reads 254; chunks are "
        "254 tokens" in lines
    )

    again = rag(root, "ingest", "docs", str(folder), "--json")
    assert again.exit_code == 0, again.output
    report = json.loads(again.output)
    assert (report["generation"], report["unchanged"], report["chunks_embedded"]) == (1, 4, 0)
    assert report["notes"][-1] == "nothing changed: generation 1 stays current"

    listed = rag(root, "list", "--json")
    assert listed.exit_code == 0, listed.output
    ((manifest),) = json.loads(listed.output)
    assert {
        k: manifest[k] for k in ("name", "generation", "documents", "chunks", "embedder", "dim", "tier")
    } == {
        "name": "docs",
        "generation": 1,
        "documents": 4,
        "chunks": CORPUS_CHUNKS,
        "embedder": EMBEDDER,
        "dim": 384,
        "tier": "s",
    }
    table = rag(root, "list")
    assert table.exit_code == 0 and table.output.startswith("collections") and "│ docs " in table.output


def test_retrieve_only_json_carries_title_section_and_anchor(shared) -> None:
    root, folder = shared
    sources = retrieved(root, "docs", "How do I submit an array job?", "-k", "3")
    assert [s["rank"] for s in sources] == [1, 2, 3]
    top = sources[0]
    assert {k: top[k] for k in ("document", "title", "section", "anchor")} == {
        "document": str(folder / "sbatch.html"),
        "title": "Batch jobs - Example HPC",
        "section": ["Submitting batch jobs", "Array jobs"],
        "anchor": "array-jobs",
    }
    assert top["text"].startswith("An array job runs the same script") and set(top["scores"]) >= {"fused"}
    text = rag(root, "query", "docs", "How do I submit an array job?", "--retrieve-only", "-k", "2")
    assert text.exit_code == 0, text.output
    assert text.output.startswith("sources for: How do I submit an array job?")
    assert text.output.splitlines()[-1].startswith("retrieval: ")


def test_edited_and_deleted_pages_never_come_back(tmp_path: Path, docs, embedder) -> None:
    folder = docs()
    root = tmp_path / "rag"
    assert rag(root, "ingest", "docs", str(folder)).exit_code == 0
    old_gpu = retrieved(root, "docs", "Request GPUs", "--filter", "source=gpus.md", "-k", "5")
    assert len(old_gpu) == 1
    (folder / "quota.md").write_text(CORPUS["quota.md"].replace("backed up nightly", "kept on tape"))
    (folder / "gpus.md").unlink()
    result = rag(root, "ingest", "docs", str(folder))
    assert result.exit_code == 0, result.output
    assert "  added 0, replaced 1, removed 1, unchanged 2" in result.output
    assert "  chunks: 1 new, 1 embedded, 0 from the cache" in result.output
    for question in (old_gpu[0]["text"], "backed up nightly", "A100 cards with 80 GB"):
        for fusion in ("convex", "dense", "bm25"):
            sources = retrieved(root, "docs", question, "-k", "20", "--fusion", fusion)
            assert all(Path(s["document"]).name != "gpus.md" for s in sources)
            assert all(s["chunk_id"] != old_gpu[0]["chunk_id"] for s in sources)
            assert not any("nightly" in s["text"] or "A100" in s["text"] for s in sources)
    nothing = rag(root, "query", "docs", "nightly", "--retrieve-only", "--fusion", "bm25")
    assert nothing.exit_code == 0 and nothing.output == "no chunk matches the question and filters\n"


def test_meta_then_filter(tmp_path: Path, docs, embedder) -> None:
    storage = docs({name: CORPUS[name] for name in ("quota.md", "gpus.md")}, name="storage")
    software = docs({"modules.txt": CORPUS["modules.txt"]}, name="software")
    root = tmp_path / "rag"
    assert rag(root, "ingest", "docs", str(storage), "--meta", "team=storage").exit_code == 0
    assert rag(root, "ingest", "docs", str(software), "--meta", "team=software").exit_code == 0
    question = "Which packages can I load?"
    assert {Path(s["document"]).name for s in retrieved(root, "docs", question, "-k", "10")} == {
        "quota.md",
        "gpus.md",
        "modules.txt",
    }
    for team, names in (("storage", {"quota.md", "gpus.md"}), ("software", {"modules.txt"})):
        sources = retrieved(root, "docs", question, "--filter", f"team={team}", "-k", "10")
        assert {Path(s["document"]).name for s in sources} == names
    assert retrieved(root, "docs", question, "--filter", "team=nobody") == []
    unknown = rag(root, "query", "docs", question, "--retrieve-only", "--filter", "colour=red")
    assert (unknown.exit_code, unknown.output) == (
        1,
        "error: unknown filter key 'colour'; this collection filters on: doc_id, format, section, source, "
        "team, title\n",
    )


def _file(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = write_docs(tmp_path / "bad", {name: content}) / name
    return str(path)


def _unreadable(tmp_path: Path) -> str:
    if os.geteuid() == 0:
        pytest.skip("running as root, which reads any file whatever its mode")
    path = Path(_file(tmp_path, "secret.md", "# Secret\n\nYou cannot read this.\n"))
    path.chmod(0)
    return str(path)


# (arguments, given the test's tmp_path) -> the whole error line, {bad} standing for the bad path.
BAD_INPUT: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "empty file": (
        lambda t: ["ingest", "docs", _file(t, "empty.md", "  \n")],
        "error: {bad} is empty; add content or leave it out",
    ),
    "binary file": (
        lambda t: ["ingest", "docs", _file(t, "blob.txt", b"\x7fELF\x00\x01\x02binary")],
        "error: {bad} contains NUL bytes (binary or UTF-16), not text; convert it to UTF-8",
    ),
    "unreadable file": (
        lambda t: ["ingest", "docs", _unreadable(t)],
        "error: {bad}: cannot read it (Permission denied); fix its permissions",
    ),
    "unknown format": (
        lambda t: ["ingest", "docs", _file(t, "notes.xyz", "plain words")],
        "error: {bad} has an unsupported type '.xyz'; convert it to one of ",
    ),
    "missing path": (
        lambda t: ["ingest", "docs", str(t / "absent")],
        "error: {bad} does not exist; check the path",
    ),
    "bad --meta": (
        lambda t: ["ingest", "docs", str(t), "--meta", "team"],
        "error: bad --meta 'team': write key=value",
    ),
    "bad collection name (ingest)": (
        lambda t: ["ingest", "Docs!", str(t)],
        "error: bad collection name 'Docs!': use 1-64 lower-case letters, digits, '.', '_' or '-', starting "
        "with a letter or digit",
    ),
    "bad collection name (query)": (
        lambda t: ["query", "../docs", "question", "--retrieve-only"],
        "error: bad collection name '../docs': use 1-64 lower-case letters, digits, '.', '_' or '-', "
        "starting with a letter or digit",
    ),
    "question of 100 KB": (
        lambda t: ["query", "docs", "q" * 100_000, "--retrieve-only"],
        "error: the question is 100,000 characters; the limit is 4,000 (rag.yaml query.max_question_chars): "
        "shorten it",
    ),
    "filter without '='": (
        lambda t: ["query", "docs", "question", "--retrieve-only", "--filter", "source"],
        "error: bad filter 'source': write key=value, e.g. source=faq.html",
    ),
    "unknown filter key": (
        lambda t: ["query", "docs", "question", "--retrieve-only", "--filter", "size=big"],
        "error: unknown filter key 'size'; this collection filters on: doc_id, format, section, source, "
        "title",
    ),
    "no gateway key": (
        lambda t: ["query", "docs", "How do I submit an array job?"],
        "error: generation goes through the gateway and needs an API key: --api-key-file or $HPCRAG_API_KEY "
        "(`hpcrag gateway keys add NAME`), or use --retrieve-only",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_changes_nothing(case: str, shared, tmp_path: Path) -> None:
    root, _ = shared
    collection = Collection(root, "docs")
    before = snapshot(collection)
    make_args, expected = BAD_INPUT[case]
    args = make_args(tmp_path)
    bad = next((a for a in args if a.startswith(str(tmp_path))), "")
    result = rag(root, *args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(expected.format(bad=bad)), result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert snapshot(collection) == before
    assert not list(collection.path.glob("gen-*.tmp"))
    assert sorted(p.name for p in root.iterdir()) == ["docs", "embeddings.sqlite"]


def test_querying_a_collection_that_does_not_exist(tmp_path: Path) -> None:
    root = tmp_path / "rag"
    result = rag(root, "query", "nope", "anything", "--retrieve-only")
    assert (result.exit_code, result.output) == (
        1,
        f"error: no collection 'nope' in {root} (collections: none); create it with "
        "`hpcrag rag ingest nope PATH...`\n",
    )
    assert not root.exists()
    assert json.loads(rag(root, "list", "--json").output) == []


def test_a_read_error_is_one_line_even_as_root(
    shared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unreadable-file case above is skipped under root; the same failure, forced, runs everywhere."""
    root, _ = shared
    collection = Collection(root, "docs")
    before = snapshot(collection)
    bad = Path(_file(tmp_path, "secret.md", "# Secret\n\nYou cannot read this.\n"))
    read_bytes = Path.read_bytes

    def refuse(path: Path) -> bytes:
        if path == bad:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    result = rag(root, "ingest", "docs", str(bad))
    assert (result.exit_code, result.output) == (
        1,
        f"error: {bad}: cannot read it (Permission denied); fix its permissions\n",
    )
    assert snapshot(collection) == before
