"""Ingest with MiniLM: incremental updates that leave nothing stale, the embedding cache, PII, injection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpcrag.errors import HpcragError
from hpcrag.rag.collection import Collection
from hpcrag.rag.ingest import ingest
from hpcrag.rag.retrieve import LoadedCollection, Retriever
from hpcrag.rag.store import ChunkRecord, ChunkStore
from tests.unit.rag.conftest import (
    CORPUS,
    CORPUS_CHUNKS,
    NOTICE,
    PLANTED,
    HashEmbedder,
    open_store,
    settings,
    snapshot,
)

SETTINGS = settings()
SSN = "078-05-1120"


def all_chunks(store: ChunkStore) -> list[tuple[str, ChunkRecord]]:
    """(file name, chunk) of every chunk in the store."""
    return [(d.name, c) for d in store.documents() for c in store.document_chunks(d.doc_id)]


def test_incremental_ingest_leaves_nothing_of_old_or_deleted_pages(tmp_path: Path, docs, embedder) -> None:
    folder = docs()
    collection = Collection(tmp_path / "rag", "docs")
    first = ingest(collection, [folder], SETTINGS, embedder)
    assert first.added == sorted(str(folder / name) for name in CORPUS)
    assert (first.generation, first.documents, first.chunks) == (1, 4, CORPUS_CHUNKS)
    assert (first.chunks_new, first.chunks_embedded, first.chunks_cached) == (CORPUS_CHUNKS,) * 2 + (0,)
    assert first.changed and not first.replaced and not first.removed

    manifest = (collection.path / "collection.json").read_bytes()
    again = ingest(collection, [folder], SETTINGS, embedder)
    assert (again.chunks_new, again.chunks_embedded, again.changed) == (0, 0, False)
    assert (again.generation, again.unchanged, again.documents, again.chunks) == (1, 4, 4, CORPUS_CHUNKS)
    assert again.notes == [
        "note: tier S asks for 256-token chunks but local:all-MiniLM-L6-v2:384:256 reads 254; chunks are 254 "
        "tokens",
        "nothing changed: generation 1 stays current",
    ]
    assert (collection.path / "collection.json").read_bytes() == manifest

    store = open_store(collection)
    old = {name: chunk for name, chunk in all_chunks(store)}
    store.close()
    gone, edited = old["gpus.md"], old["quota.md"]
    (folder / "quota.md").write_text(CORPUS["quota.md"].replace("backed up nightly", "kept on tape"))
    (folder / "gpus.md").unlink()
    third = ingest(collection, [folder], SETTINGS, embedder)
    assert third.replaced == [str(folder / "quota.md")] and third.removed == [str(folder / "gpus.md")]
    assert (third.added, third.unchanged, third.generation, third.documents) == ([], 2, 2, 3)
    assert (third.chunks_new, third.chunks_embedded) == (1, 1)

    loaded = LoadedCollection(collection)
    try:
        store = loaded.store
        chunks = all_chunks(store)
        assert "gpus.md" not in {d.name for d in store.documents()}
        assert not any("nightly" in c.text or "nightly" in c.embed_text for _, c in chunks)
        assert not any("A100" in c.text for _, c in chunks)
        (quota,) = [c for name, c in chunks if name == "quota.md"]
        assert quota.chunk_id == edited.chunk_id and "kept on tape" in quota.text  # same place, same id
        # BM25: words only the old versions had match nothing.
        for word in ("nightly", "A100", "gres"):
            ids, _ = loaded.sparse.search(word, 50)
            assert ids.size == 0, word
        # Dense: the deleted chunk's own text does not bring its id back; the store has no row for it.
        assert store.rows_of(np.array([gone.chunk_id])).tolist() == [-1]
        retriever = Retriever(loaded, embedder, SETTINGS)
        for question in (gone.embed_text, gone.text, edited.text):
            for fusion in ("dense", "bm25", "convex"):
                found = retriever.retrieve(question, fusion=fusion).candidates
                assert gone.chunk_id not in {c.chunk_id for c in found}
                texts = [c.text for c in store.chunks([c.row for c in found])]
                assert not any("nightly" in t or "A100" in t for t in texts)
    finally:
        loaded.close()


def test_an_edited_page_embeds_only_its_changed_chunks(tmp_path: Path, docs, embedder) -> None:
    sections = {
        name: f"## {name}\n\nThe {name.lower()} step of the workflow "
        + "reads its inputs and writes results. " * 8
        for name in ("Prepare", "Compute", "Collect")
    }
    page = "# Workflow\n\n" + "\n\n".join(sections.values())
    folder = docs({"workflow.md": page})
    collection = Collection(tmp_path / "rag", "docs")
    first = ingest(collection, [folder], SETTINGS, embedder)
    assert (first.chunks, first.chunks_embedded) == (3, 3)
    (folder / "workflow.md").write_text(page.replace("The compute step", "The compute step (on GPUs)"))
    second = ingest(collection, [folder], SETTINGS, embedder)
    assert second.replaced == [str(folder / "workflow.md")]
    assert (second.chunks_new, second.chunks_embedded, second.chunks_cached) == (3, 1, 2)
    store = open_store(collection)
    try:
        texts = [c.text for _, c in all_chunks(store)]
        assert [("(on GPUs)" in t) for t in texts] == [False, True, False]
    finally:
        store.close()


def test_ingesting_another_folder_keeps_the_first(tmp_path: Path, docs, embedder) -> None:
    first = docs({name: CORPUS[name] for name in ("quota.md", "gpus.md")}, name="storage")
    second = docs({"modules.txt": CORPUS["modules.txt"]}, name="software")
    collection = Collection(tmp_path / "rag", "docs")
    ingest(collection, [first], SETTINGS, embedder, metadata={"team": "storage"})
    report = ingest(collection, [second], SETTINGS, embedder, metadata={"team": "software"})
    assert (report.added, report.removed, report.documents) == ([str(second / "modules.txt")], [], 3)
    store = open_store(collection)
    try:
        teams = {d.name: d.metadata for d in store.documents()}
        assert teams == {
            "gpus.md": {"team": "storage"},
            "quota.md": {"team": "storage"},
            "modules.txt": {"team": "software"},
        }
        assert store.filter_mask({"team": ["storage"]}).sum() == 2
    finally:
        store.close()
    # Deleting a page of the first folder and ingesting that folder again removes just that page.
    (first / "gpus.md").unlink()
    report = ingest(collection, [first], SETTINGS, embedder)
    assert (report.removed, report.documents) == ([str(first / "gpus.md")], 2)


def test_html_title_heading_path_and_anchor_reach_the_chunks(tmp_path: Path, docs, embedder) -> None:
    folder = docs({"sbatch.html": CORPUS["sbatch.html"]})
    collection = Collection(tmp_path / "rag", "docs")
    ingest(collection, [folder], SETTINGS, embedder)
    store = open_store(collection)
    try:
        (document,) = store.documents()
        assert (document.title, document.format) == ("Batch jobs - Example HPC", "html")
        chunks = store.document_chunks(document.doc_id)
        assert [(c.position, c.heading_path, c.anchor) for c in chunks] == [
            (0, ("Submitting batch jobs",), None),
            (1, ("Submitting batch jobs", "Array jobs"), "array-jobs"),
            (2, ("Submitting batch jobs", "Time limits"), "time-limits"),
        ]
        assert chunks[1].embed_text.startswith(
            "Batch jobs - Example HPC\nSubmitting batch jobs > Array jobs\n\nAn array job runs"
        )
        assert not any("Home" in c.text for c in chunks)  # the navigation bar is page chrome
    finally:
        store.close()


def test_pii_in_documents_is_masked_or_refused(tmp_path: Path, docs, embedder) -> None:
    contact = (
        "# Support\n\nWrite to alice.admin@example.org. The sample form shows SSN " + SSN + ".\n\n"
        "## Escalation: bob.boss@example.org\n\nCall the duty officer.\n"
    )
    folder = docs({"contact.md": contact, "modules.txt": CORPUS["modules.txt"]})
    masked = Collection(tmp_path / "rag", "masked")
    report = ingest(masked, [folder], settings(pii="mask"), embedder)
    assert (
        report.pii_masked == 2 and report.refused == []
    )  # two sections: one by its text, one by its heading
    loaded = LoadedCollection(masked)
    try:
        chunks = {name: c for name, c in all_chunks(loaded.store)}
        text = chunks["contact.md"]
        assert SSN not in text.text and SSN not in text.embed_text and "alice.admin" not in text.embed_text
        # Presidio knows 078-05-1120 as the famous invalid SSN; it is still masked, as a phone number.
        assert text.text.startswith("Write to <EMAIL_ADDRESS>. The sample form shows SSN <PHONE_NUMBER>.")
        # The two small sections are merged into one chunk, which names the second by its (masked) heading.
        assert text.text.endswith("\n\nEscalation: <EMAIL_ADDRESS>\nCall the duty officer.")
        assert "bob.boss" not in text.embed_text and "bob.boss" not in str(text.metadata)
        assert [d.pii_masked for d in loaded.store.documents() if d.name == "contact.md"] == [2]
        for word in ("1120", "078", "alice"):
            assert loaded.sparse.search(word, 10)[0].size == 0, word
    finally:
        loaded.close()

    refused = Collection(tmp_path / "rag", "refused")
    report = ingest(refused, [folder], settings(pii="refuse"), embedder)
    ((source, reason),) = report.refused
    assert source == str(folder / "contact.md")
    assert reason == (
        f"document {source} contains personal data (2 findings: 1 EMAIL_ADDRESS, 1 PHONE_NUMBER); "
        "remove it, or set the PII policy to 'mask' to replace it with placeholders"
    )
    assert report.added == [str(folder / "modules.txt")]
    store = open_store(refused)
    try:
        assert [d.name for d in store.documents()] == ["modules.txt"]
        assert not any(SSN in c.text for _, c in all_chunks(store))
    finally:
        store.close()


def test_a_page_refused_after_an_edit_loses_its_old_version(tmp_path: Path, docs, embedder) -> None:
    folder = docs(
        {"contact.md": "# Support\n\nWrite to the help desk.\n", "modules.txt": CORPUS["modules.txt"]}
    )
    collection = Collection(tmp_path / "rag", "docs")
    ingest(collection, [folder], settings(pii="refuse"), embedder)
    (folder / "contact.md").write_text(f"# Support\n\nThe sample form shows SSN {SSN}.\n")
    report = ingest(collection, [folder], settings(pii="refuse"), embedder)
    assert [source for source, _ in report.refused] == [str(folder / "contact.md")]
    assert report.removed == [str(folder / "contact.md")] and report.generation == 2
    store = open_store(collection)
    try:
        assert [d.name for d in store.documents()] == ["modules.txt"]
    finally:
        store.close()


def test_planted_instructions_are_flagged_or_dropped_at_ingest(tmp_path: Path, docs, embedder) -> None:
    folder = docs({"notice.md": PLANTED})
    flagged = Collection(tmp_path / "rag", "flagged")
    report = ingest(flagged, [folder], settings(injection="flag"), embedder)
    assert (report.injection_flagged, report.injection_dropped, report.chunks) == (1, 0, 2)
    store = open_store(flagged)
    try:
        (document,) = store.documents()
        first, planted = store.document_chunks(document.doc_id)
        assert first.injection == () and planted.injection == ("instruction", "role_marker")
        assert document.injection_flags == 1
        assert "<|im_start|>" in planted.text  # stored as written; the fence neutralises it in prompts
    finally:
        store.close()

    dropped = Collection(tmp_path / "rag", "dropped")
    report = ingest(dropped, [folder], settings(injection="drop"), embedder)
    assert (report.injection_flagged, report.injection_dropped, report.chunks) == (1, 1, 1)
    store = open_store(dropped)
    try:
        assert [c.text for _, c in all_chunks(store)] == [NOTICE]
    finally:
        store.close()


def test_unreadable_pages_in_a_folder_are_skipped_and_named(tmp_path: Path, docs, embedder) -> None:
    folder = docs({"empty.md": "", "blob.txt": b"\x00\x01binary\x00", "notes.xyz": "not a format", **CORPUS})
    collection = Collection(tmp_path / "rag", "docs")
    report = ingest(collection, [folder], SETTINGS, embedder)
    assert report.documents == 4  # .xyz is not even looked at inside a folder
    assert report.skipped == [
        (
            str(folder / "blob.txt"),
            f"{folder / 'blob.txt'} contains NUL bytes (binary or UTF-16), not text; convert it to UTF-8",
        ),
        (str(folder / "empty.md"), f"{folder / 'empty.md'} is empty; add content or leave it out"),
    ]


def test_an_embedder_of_another_dimension_is_refused(tmp_path: Path, docs, embedder) -> None:
    folder = docs()
    collection = Collection(tmp_path / "rag", "docs")
    ingest(collection, [folder], SETTINGS, embedder)
    before = snapshot(collection)
    (folder / "modules.txt").write_text("Environment modules\n\nChanged, so there is something to do.\n")
    small = HashEmbedder(dim=8)
    with pytest.raises(HpcragError) as caught:
        ingest(collection, [folder], SETTINGS, small)
    assert str(caught.value) == (
        "collection 'docs' holds 384-d embeddings from local:all-MiniLM-L6-v2:384:256, but this embedder "
        "gives 8-d vectors; use the collection's embedder or a new collection"
    )
    assert small.calls == [] and snapshot(collection) == before
    loaded = LoadedCollection(collection)
    try:
        with pytest.raises(HpcragError, match=r"holds 384-d embeddings but the embedder gives 8-d vectors"):
            Retriever(loaded, small, SETTINGS)
    finally:
        loaded.close()
