"""A collection on disk: names, generations swapped whole, stable chunk ids, failed ingests leave no trace.

These tests use a hashed bag-of-words embedder (chunking with MiniLM's tokenizer): what they check does
not depend on the embedding model, and it keeps them fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpcrag.errors import HpcragError
from hpcrag.rag.collection import Collection, check_name, list_collections
from hpcrag.rag.ingest import ingest
from hpcrag.rag.sparse import SparseIndex
from hpcrag.rag.store import chunk_id, document_id
from tests.unit.rag.conftest import CORPUS, CORPUS_CHUNKS, HashEmbedder, open_store, settings, snapshot

SETTINGS = settings()


@pytest.fixture
def fake() -> HashEmbedder:
    return HashEmbedder(dim=16)


@pytest.mark.parametrize("name", ["Docs", "", "-docs", ".hidden", "a b", "../up", "x/y", "a" * 65, "dé"])
def test_bad_collection_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(HpcragError, match=r"^bad collection name .*lower-case letters, digits"):
        Collection(tmp_path / "rag", name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["docs", "slurm-docs", "v1.2_x", "0", "a" * 64])
def test_good_collection_names(name: str) -> None:
    assert check_name(name) == name


def test_a_missing_collection_names_the_known_ones_and_the_fix(tmp_path: Path, docs, fake) -> None:
    ingest(Collection(tmp_path / "rag", "kept"), [docs()], SETTINGS, fake)
    (tmp_path / "rag" / "stray").mkdir()  # a folder without a manifest is not a collection
    missing = Collection(tmp_path / "rag", "nope")
    assert not missing.exists()
    with pytest.raises(HpcragError) as caught:
        missing.manifest()
    assert str(caught.value) == (
        f"no collection 'nope' in {tmp_path / 'rag'} (collections: kept); "
        "create it with `hpcrag rag ingest nope PATH...`"
    )
    assert [m.name for m in list_collections(tmp_path / "rag")] == ["kept"]
    assert list_collections(tmp_path / "absent") == []


def test_generations_swap_and_keep_only_the_previous_one(tmp_path: Path, docs, fake) -> None:
    folder = docs()
    collection = Collection(tmp_path / "rag", "docs")
    first = ingest(collection, [folder], SETTINGS, fake)
    assert (first.generation, first.documents, first.chunks) == (1, 4, CORPUS_CHUNKS)
    manifest = collection.manifest()
    assert (manifest.generation, manifest.documents, manifest.chunks) == (1, 4, CORPUS_CHUNKS)
    assert (manifest.embedder, manifest.dim, manifest.tier) == ("test:hash:16", 16, "s")
    assert (manifest.chunk_tokens, manifest.overlap_tokens) == (
        254,
        51,
    )  # the tier asks 256; MiniLM reads 254
    for generation in (2, 3):
        (folder / "modules.txt").write_text(f"Environment modules\n\nRevision {generation} of the page.\n")
        assert ingest(collection, [folder], SETTINGS, fake).generation == generation
    # gen 2 stays for readers that opened it just before the swap; gen 1 is gone.
    assert sorted(p.name for p in collection.path.iterdir()) == [
        ".lock",
        "collection.json",
        "gen-000002",
        "gen-000003",
    ]
    assert collection.current_path() == collection.path / "gen-000003"
    assert (tmp_path / "rag" / "embeddings.sqlite").is_file()  # the cache sits beside the collections


def test_chunk_ids_are_stable_across_generations_and_unique(tmp_path: Path, docs, fake) -> None:
    folder = docs()
    collection = Collection(tmp_path / "rag", "docs")
    ingest(collection, [folder], SETTINGS, fake)

    def ids() -> dict[tuple[str, int], int]:
        store = open_store(collection)
        try:
            found = {
                (Path(d.source).name, c.position): c.chunk_id
                for d in store.documents()
                for c in store.document_chunks(d.doc_id)
            }
            assert len(set(store.chunk_ids().tolist())) == store.count == len(found)
        finally:
            store.close()
        return found

    before = ids()
    assert len(before) == CORPUS_CHUNKS
    assert before == {
        (name, position): chunk_id(document_id(str(folder / name)), position) for name, position in before
    }
    # The HTML page is edited (its second chunk's text changes); every (document, position) keeps its id.
    page = CORPUS["sbatch.html"].replace("many times", "many, many times")
    (folder / "sbatch.html").write_text(page)
    report = ingest(collection, [folder], SETTINGS, fake)
    assert (report.generation, report.replaced) == (2, [str(folder / "sbatch.html")])
    assert ids() == before
    store = open_store(collection)
    try:
        (page_doc,) = [d for d in store.documents() if d.name == "sbatch.html"]
        assert "many, many times" in store.document_chunks(page_doc.doc_id)[1].text
    finally:
        store.close()


def test_a_failed_ingest_leaves_the_previous_generation_current(
    tmp_path: Path, docs, fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = docs()
    collection = Collection(tmp_path / "rag", "docs")
    ingest(collection, [folder], SETTINGS, fake)
    before = snapshot(collection)
    (folder / "modules.txt").write_text("Environment modules\n\nA new revision that never lands.\n")

    def broken_build(texts: list[str], ids: np.ndarray) -> SparseIndex:
        assert (collection.path / "gen-000002.tmp" / "store.sqlite").is_file()  # midway indeed
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SparseIndex, "build", staticmethod(broken_build))
    with pytest.raises(OSError, match="No space left"):
        ingest(collection, [folder], SETTINGS, fake)
    assert snapshot(collection) == before
    assert not list(collection.path.glob("gen-*.tmp"))
    store = open_store(collection)
    try:
        texts = [c.text for d in store.documents() for c in store.document_chunks(d.doc_id)]
        assert not any("never lands" in text for text in texts)
    finally:
        store.close()

    monkeypatch.undo()
    report = ingest(collection, [folder], SETTINGS, fake)
    assert (report.generation, report.replaced) == (2, [str(folder / "modules.txt")])


def test_a_crashed_ingest_leftover_is_removed_by_the_next(tmp_path: Path, docs, fake) -> None:
    folder = docs()
    collection = Collection(tmp_path / "rag", "docs")
    ingest(collection, [folder], SETTINGS, fake)
    leftover = collection.path / "gen-000002.tmp"
    leftover.mkdir()
    (leftover / "store.sqlite").write_bytes(b"half written")
    (folder / "gpus.md").unlink()
    report = ingest(collection, [folder], SETTINGS, fake)
    assert (report.generation, report.removed) == (2, [str(folder / "gpus.md")])
    assert sorted(p.name for p in collection.path.glob("gen-*")) == ["gen-000001", "gen-000002"]


def test_a_publish_cut_short_never_blocks_the_next_ingest(tmp_path: Path, docs, fake) -> None:
    """A generation folder that was renamed into place but never named by collection.json (the process
    died in between) is skipped over and then removed, never reused."""
    folder = docs()
    collection = Collection(tmp_path / "rag", "docs")
    ingest(collection, [folder], SETTINGS, fake)
    orphan = collection.path / "gen-000002"
    orphan.mkdir()
    (orphan / "store.sqlite").write_bytes(b"never published")
    (folder / "gpus.md").unlink()
    report = ingest(collection, [folder], SETTINGS, fake)
    assert report.generation == collection.manifest().generation == 3
    assert sorted(p.name for p in collection.path.glob("gen-*")) == ["gen-000001", "gen-000003"]


def test_a_second_ingest_of_the_same_collection_is_refused(tmp_path: Path, docs, fake) -> None:
    collection = Collection(tmp_path / "rag", "docs")
    with (
        collection.ingest_lock(),
        pytest.raises(HpcragError, match="is being ingested by another process; wait for it"),
    ):
        ingest(collection, [docs()], SETTINGS, fake)
    assert not collection.exists()
    assert ingest(collection, [docs()], SETTINGS, fake).generation == 1


def test_store_lookups_and_filter_keys(tmp_path: Path, docs, fake) -> None:
    folder = docs()
    collection = Collection(tmp_path / "rag", "docs")
    ingest(collection, [folder], SETTINGS, fake, metadata={"team": "hpc"})
    store = open_store(collection)
    try:
        ids = store.chunk_ids()
        assert store.rows_of(ids[::-1]).tolist() == list(range(store.count))[::-1]
        assert store.rows_of(np.array([12345, ids[2]])).tolist() == [-1, 2]
        quota = store.filter_mask({"source": ["quota.md"]})
        (quota_doc,) = [d for d in store.documents() if d.name == "quota.md"]
        assert np.flatnonzero(quota).tolist() == [c.row for c in store.document_chunks(quota_doc.doc_id)]
        assert store.filter_mask({"source": ["*.md"], "format": ["markdown"]}).sum() == 2
        assert store.filter_mask({"team": ["hpc"]}).all()
        assert not store.filter_mask({"team": ["other"]}).any()
        assert store.filter_mask({"section": ["array jobs"]}).sum() == 1
        with pytest.raises(HpcragError) as caught:
            store.filter_mask({"colour": ["red"]})
        assert str(caught.value) == (
            "unknown filter key 'colour'; this collection filters on: doc_id, format, section, source, team, "
            "title"
        )
    finally:
        store.close()
