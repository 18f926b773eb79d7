"""Ingest: files in, a new collection generation out (extract, PII, chunk, guard, embed, index).

Incremental: a document whose bytes and chunking settings are unchanged keeps its chunks and their
embeddings; a changed one is re-chunked (its chunk ids are replaced, never duplicated); a document
that was ingested from one of the given folders and is gone from it, or that is given but skipped or
refused this time, is removed; documents outside the given paths stay as they are. The dense and BM25
indexes are rebuilt from the whole generation (hpcrag's IVF cannot update in place yet), which the
embedding cache keeps cheap. Nothing of a failed ingest becomes visible.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcrag.config.rag_schema import CollectionSettings
from hpcrag.errors import HpcragError
from hpcrag.rag.collection import FORMAT_VERSION, Collection, CollectionManifest
from hpcrag.rag.retrieve import read_embeddings
from hpcrag.rag.store import ChunkRecord, ChunkStore, DocumentRecord, chunk_id, document_id
from hpcrag.rag.types import Embedder, ExtractedDocument, Section
from hpcrag.search.comm import Communicator

Say = Callable[[str], None]


@dataclass
class IngestReport:
    collection: str
    generation: int
    documents: int = 0
    chunks: int = 0
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    chunks_new: int = 0
    chunks_embedded: int = 0
    chunks_cached: int = 0
    pii_masked: int = 0
    injection_flagged: int = 0
    injection_dropped: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.replaced or self.removed)

    def rates(self) -> tuple[float, float]:
        """Chunks/s of the whole ingest and of its embedding stage (cache lookups included), over the
        chunks it embedded."""
        total = self.seconds.get("total", 0.0)
        embed = self.seconds.get("embed", 0.0)
        whole = self.chunks_embedded / total if total else 0.0
        alone = self.chunks_embedded / embed if embed else 0.0
        return whole, alone


@dataclass
class _Pending:
    record: DocumentRecord
    chunks: list[ChunkRecord]
    vectors: np.ndarray | None  # kept documents bring their embeddings; new ones get them later


def ingest(
    collection: Collection,
    paths: Sequence[Path | str],
    settings: CollectionSettings,
    embedder: Embedder,
    metadata: dict[str, str] | None = None,
    progress: bool = False,
    say: Say | None = None,
    comm: Communicator | None = None,
) -> IngestReport:
    """Ingest `paths` (files or folders) into `collection`; returns what changed.

    Collective over `comm` (an MPI job, e.g. `srun --mpi=pmix hpcrag rag ingest ...`): each rank
    extracts and embeds its share of the files, rank 0 writes the store and BM25, and every rank
    builds the dense index together (`hpcrag index build` over MPI). The report is complete on rank 0.
    """
    from hpcrag.search.comm import LocalComm, agree

    comm = comm or LocalComm()
    rank0 = comm.rank == 0
    say = (say or (lambda message: None)) if rank0 else (lambda message: None)
    started = time.perf_counter()
    files = agree(comm, lambda: discover([Path(p) for p in paths]))
    with ExitStack() as held:
        agree(comm, lambda: held.enter_context(collection.ingest_lock()) if rank0 else None)
        old = agree(comm, lambda: _open_current(collection, embedder))
        report = IngestReport(collection.name, old.manifest.generation if old else 0)
        # A note of the summary (once, on rank 0), not a line in front of an error about a file.
        size, overlap = chunk_sizes(settings, embedder, report.notes.append if rank0 else say)
        mine = files[comm.rank :: comm.size]
        try:
            pending = agree(
                comm,
                lambda: _documents(mine, old, settings, embedder, size, overlap, metadata or {}, report, say),
            )
            found = {str(f.path) for f in files}
            carried = agree(comm, lambda: _carried(old, paths, found) if rank0 else [])
        finally:
            if old is not None:
                old.store.close()
        agree(comm, lambda: _embed_new(pending, collection, embedder, settings, progress and rank0, report))
        parts = comm.gather_obj((pending, report))
        if rank0:
            assert parts is not None
            pending = [item for part, _ in parts for item in part] + carried
            report = _merged([r for _, r in parts])
            report.removed = _removed(old, pending)
        unchanged = comm.bcast_obj(
            rank0 and old is not None and not report.changed and old.manifest.chunk_tokens == size
        )
        if unchanged:
            assert old is not None
            report.documents, report.chunks = old.manifest.documents, old.manifest.chunks
            report.seconds["total"] = time.perf_counter() - started
            report.notes.append(f"nothing changed: generation {report.generation} stays current")
            return report
        _write_generation(collection, pending, embedder, settings, size, overlap, report, say, comm)
    report.seconds["total"] = time.perf_counter() - started
    return report


def _merged(reports: list[IngestReport]) -> IngestReport:
    """One report from the ranks' own: lists joined, counts summed, stage times the slowest rank's."""
    merged = reports[0]
    for other in reports[1:]:
        for name in ("added", "replaced", "skipped", "refused", "notes"):
            getattr(merged, name).extend(getattr(other, name))
        for name in ("unchanged", "chunks_new", "chunks_embedded", "chunks_cached", "pii_masked"):
            setattr(merged, name, getattr(merged, name) + getattr(other, name))
        merged.injection_flagged += other.injection_flagged
        merged.injection_dropped += other.injection_dropped
        for stage, seconds in other.seconds.items():
            merged.seconds[stage] = max(merged.seconds.get(stage, 0.0), seconds)
    return merged


@dataclass(frozen=True)
class _File:
    path: Path
    explicit: bool  # named on the command line: a problem with it fails the ingest


def discover(paths: Sequence[Path]) -> list[_File]:
    """The files to ingest: named files as they are, folders walked for the formats extract reads."""
    from hpcrag.rag.extract import SUPPORTED_SUFFIXES, is_supported

    if not paths:
        raise HpcragError("nothing to ingest: give at least one file or folder")
    found: dict[Path, _File] = {}
    for given in paths:
        path = given.expanduser().resolve()  # one spelling per file: ingested twice it is one document
        if not path.exists():
            raise HpcragError(f"{given} does not exist; check the path")
        if path.is_dir():
            if not os.access(path, os.R_OK | os.X_OK):
                raise HpcragError(f"{given} is not readable; fix its permissions")
            for file in sorted(path.rglob("*")):
                hidden = any(part.startswith(".") for part in file.relative_to(path).parts)
                if file.is_file() and not hidden and is_supported(file):
                    found.setdefault(file, _File(file, explicit=False))
        else:
            found[path] = _File(path, explicit=True)
    if not found:
        raise HpcragError(
            f"no documents found in {', '.join(map(str, paths))}; readable formats: "
            f"{', '.join(sorted(SUPPORTED_SUFFIXES))}"
        )
    return list(found.values())


@dataclass
class _Old:
    manifest: CollectionManifest
    store: ChunkStore
    vectors: np.ndarray
    by_source: dict[str, DocumentRecord]


def _open_current(collection: Collection, embedder: Embedder) -> _Old | None:
    if not collection.exists():
        return None
    manifest = collection.manifest()
    if manifest.dim != embedder.dim:
        raise HpcragError(
            f"collection {collection.name!r} holds {manifest.dim}-d embeddings from {manifest.embedder}, "
            f"but this embedder gives {embedder.dim}-d vectors; use the collection's embedder "
            "or a new collection"
        )
    if manifest.embedder != embedder.name:
        raise HpcragError(
            f"collection {collection.name!r} was embedded by {manifest.embedder}, not {embedder.name}; "
            "mixing embedders makes scores meaningless: ingest into a new collection"
        )
    folder = collection.current_path()
    try:
        store = ChunkStore(folder / "store.sqlite")
        try:
            vectors = read_embeddings(folder, store.count, manifest.dim)
        except HpcragError:
            store.close()
            raise
    except HpcragError as exc:
        raise HpcragError(
            f"{exc} (the current generation cannot be read, so it cannot be updated: remove "
            f"{collection.path} and ingest again; the embedding cache beside it keeps that quick)"
        ) from None
    return _Old(manifest, store, vectors, {d.source: d for d in store.documents()})


def chunk_sizes(settings: CollectionSettings, embedder: Embedder, say: Say) -> tuple[int, int]:
    """The tier's chunk size and overlap in word pieces, shrunk to what the embedder reads whole."""
    row = settings.row
    size = row.chunk_tokens
    if size > embedder.max_tokens:
        say(
            f"note: tier {settings.tier.upper()} asks for {size}-token chunks but {embedder.name} reads "
            f"{embedder.max_tokens}; chunks are {embedder.max_tokens} tokens"
        )
        size = embedder.max_tokens
    return size, round(size * row.overlap)


def _content_hash(data: bytes, size: int, overlap: int, settings: CollectionSettings) -> str:
    """Bytes plus everything that shapes the chunks: a change in either re-chunks the document."""
    digest = hashlib.sha256(data)
    digest.update(f"\0{size}:{overlap}:{settings.pii}:{settings.injection}".encode())
    return digest.hexdigest()


def _documents(
    files: list[_File],
    old: _Old | None,
    settings: CollectionSettings,
    embedder: Embedder,
    size: int,
    overlap: int,
    metadata: dict[str, str],
    report: IngestReport,
    say: Say,
) -> list[_Pending]:
    from hpcrag.rag.chunk import chunk_document
    from hpcrag.rag.extract import ExtractError, extract

    tokens = embedder.tokenizer()
    pending: list[_Pending] = []
    clock = report.seconds
    for file in files:
        source = str(file.path)
        try:
            data = file.path.read_bytes()
        except OSError as exc:
            _problem(file, f"cannot read it ({exc.strerror or exc}); fix its permissions", report)
            continue
        digest = _content_hash(data, size, overlap, settings)
        previous = old.by_source.get(source) if old else None
        if (
            previous is not None
            and previous.content_hash == digest
            and previous.metadata
            == {
                **previous.metadata,
                **metadata,
            }
        ):
            assert old is not None
            chunks = old.store.document_chunks(previous.doc_id)
            rows = [c.row for c in chunks]
            pending.append(_Pending(previous, chunks, np.asarray(old.vectors[rows], dtype=np.float32)))
            report.unchanged += 1
            continue
        t0 = time.perf_counter()
        try:
            document = extract(file.path, data=data)
        except ExtractError as exc:
            _problem(file, str(exc), report)
            continue
        clock["extract"] = clock.get("extract", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            document, masked = _apply_pii(document, settings)
        except HpcragError as exc:
            report.refused.append((source, str(exc)))
            continue
        clock["pii"] = clock.get("pii", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        pieces = chunk_document(document, tokens, size, overlap)
        clock["chunk"] = clock.get("chunk", 0.0) + time.perf_counter() - t0
        doc_id = document_id(source)
        chunks, flagged = _guarded_chunks(doc_id, pieces, settings, report)
        if not chunks:
            _problem(file, "no text to index after extraction", report)
            continue
        record = DocumentRecord(
            doc_id=doc_id,
            source=source,
            title=document.title,
            format=document.format,
            content_hash=digest,
            ingested_at=time.time(),
            bytes=len(data),
            pii_masked=masked,
            injection_flags=flagged,
            metadata={**(previous.metadata if previous else {}), **metadata},
        )
        report.pii_masked += masked
        (report.replaced if previous else report.added).append(source)
        pending.append(_Pending(record, chunks, None))
    return pending


def _problem(file: _File, problem: str, report: IngestReport) -> None:
    if file.explicit:
        raise HpcragError(problem if str(file.path) in problem else f"{file.path}: {problem}")
    report.skipped.append((str(file.path), problem))


def _apply_pii(document: ExtractedDocument, settings: CollectionSettings) -> tuple[ExtractedDocument, int]:
    """The document with PII masked (policy mask), refused (raises), or untouched (off)."""
    if settings.pii == "off":
        return document, 0
    from hpcrag.rag.pii import PiiGuard

    guard = PiiGuard()
    what = f"document {document.source}"
    masked = 0
    sections = []
    for section in document.sections:
        text = guard.apply(section.text, settings.pii, what)
        headings = tuple(guard.apply(heading, settings.pii, what) for heading in section.heading_path)
        masked += text != section.text or headings != section.heading_path
        sections.append(Section(headings, section.anchor, text))
    title = guard.apply(document.title, settings.pii, what)
    return ExtractedDocument(document.source, title, document.format, sections), masked


def _guarded_chunks(
    doc_id: str, pieces: list, settings: CollectionSettings, report: IngestReport
) -> tuple[list[ChunkRecord], int]:
    """Chunk records with injection findings attached (and dropped, under the `drop` policy)."""
    from hpcrag.rag import injection

    chunks: list[ChunkRecord] = []
    flagged = 0
    for piece in pieces:
        kinds: tuple[str, ...] = ()
        if settings.injection != "off":
            kinds = tuple(sorted({finding.kind for finding in injection.detect(piece.text)}))
        if kinds:
            flagged += 1
            report.injection_flagged += 1
            if settings.injection == "drop":
                report.injection_dropped += 1
                continue
        chunks.append(
            ChunkRecord(
                chunk_id=chunk_id(doc_id, piece.position),
                doc_id=doc_id,
                position=piece.position,
                text=piece.text,
                embed_text=piece.embed_text,
                heading_path=tuple(piece.heading_path),
                anchor=piece.anchor,
                token_count=piece.token_count,
                injection=kinds,
                metadata=dict(piece.metadata),
            )
        )
    return chunks, flagged


def _carried(old: _Old | None, paths: Sequence[Path | str], found: set[str]) -> list[_Pending]:
    """Documents of the current generation that this ingest does not touch: kept with their embeddings.

    Those are the ones outside `found` (the files given or walked now), except the ones that were
    under a given path and are gone from it.
    """
    if old is None:
        return []
    roots = [Path(p).expanduser().resolve() for p in paths]
    carried = []
    for source, record in old.by_source.items():
        path = Path(source)
        if source in found or (
            any(path == root or root in path.parents for root in roots) and not path.exists()
        ):
            continue
        chunks = old.store.document_chunks(record.doc_id)
        vectors = np.asarray(old.vectors[[c.row for c in chunks]], dtype=np.float32)
        carried.append(_Pending(record, chunks, vectors))
    return carried


def _removed(old: _Old | None, pending: list[_Pending]) -> list[str]:
    """Sources of the current generation that the new one drops: gone from a given folder, or given
    but not ingested this time (skipped or refused), so that no old version of them stays queryable."""
    if old is None:
        return []
    kept = {p.record.source for p in pending}
    return sorted(source for source in old.by_source if source not in kept)


def _embed_new(
    pending: list[_Pending],
    collection: Collection,
    embedder: Embedder,
    settings: CollectionSettings,
    progress: bool,
    report: IngestReport,
) -> None:
    from hpcrag.rag.embed import embed_all
    from hpcrag.rag.embed_cache import EmbeddingCache

    fresh = [p for p in pending if p.vectors is None]
    texts = [c.embed_text for p in fresh for c in p.chunks]
    report.chunks_new = len(texts)
    if not texts:
        return
    with EmbeddingCache(collection.cache_path) as cache:
        result = embed_all(embedder, texts, cache, settings.embedder.batch_size, progress)
    report.chunks_embedded = result.embedded
    report.chunks_cached = result.cached
    report.seconds["embed"] = result.seconds
    start = 0
    for item in fresh:
        item.vectors = result.vectors[start : start + len(item.chunks)]
        start += len(item.chunks)


def _write_generation(
    collection: Collection,
    pending: list[_Pending],
    embedder: Embedder,
    settings: CollectionSettings,
    size: int,
    overlap: int,
    report: IngestReport,
    say: Say,
    comm: Communicator,
) -> None:
    """Rank 0 writes the store, embeddings and BM25; all ranks build the dense index; rank 0 publishes."""
    import shutil

    from hpcrag.search.comm import agree

    rank0 = comm.rank == 0
    t0 = time.perf_counter()
    staged = agree(comm, lambda: _stage(collection, pending) if rank0 else None)
    generation, staging, count = comm.bcast_obj(staged)
    try:
        report.seconds["store"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _build_dense(Path(staging), count, settings, comm, say)
        report.seconds["dense_index"] = time.perf_counter() - t0
        if rank0:
            t0 = time.perf_counter()
            _build_sparse(Path(staging), pending)
            report.seconds["bm25_index"] = time.perf_counter() - t0
            documents = len(pending)
            manifest = CollectionManifest(
                format_version=FORMAT_VERSION,
                name=collection.name,
                generation=generation,
                embedder=embedder.name,
                dim=embedder.dim,
                tier=settings.tier,
                chunk_tokens=size,
                overlap_tokens=overlap,
                documents=documents,
                chunks=count,
                updated_at=time.time(),
            )
        agree(comm, lambda: collection.publish(Path(staging), manifest) if rank0 else None)
    except BaseException:
        if rank0:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    report.generation = generation
    report.documents, report.chunks = comm.bcast_obj(len(pending) if rank0 else None), count
    report.notes.append(
        "dense and BM25 indexes rebuilt from the whole collection (hpcrag's IVF cannot update in place yet)"
    )


def _stage(collection: Collection, pending: list[_Pending]) -> tuple[int, str, int]:
    """A new generation folder holding the store, the embeddings and the chunk ids, in source order."""
    pending.sort(key=lambda p: p.record.source)
    chunks = [c for p in pending for c in p.chunks]
    if not chunks:
        raise HpcragError(
            f"nothing left to index in collection {collection.name!r}; the collection is left as it was"
        )
    vectors = np.concatenate([p.vectors for p in pending if p.vectors is not None]).astype(np.float32)
    generation, staging = collection.new_generation()
    ChunkStore.write(staging / "store.sqlite", [p.record for p in pending], chunks)
    np.save(staging / "embeddings.npy", vectors)
    np.save(staging / "chunk_ids.npy", np.array([c.chunk_id for c in chunks], dtype=np.int64))
    return generation, str(staging), len(chunks)


def _build_sparse(staging: Path, pending: list[_Pending]) -> None:
    from hpcrag.rag.sparse import SparseIndex

    chunks = [c for p in pending for c in p.chunks]
    ids = np.array([c.chunk_id for c in chunks], dtype=np.int64)
    SparseIndex.build([c.embed_text for c in chunks], ids).save(staging / "bm25")


def dense_layout(count: int, nshards: int) -> tuple[int, int]:
    """(nlist, nshards) for `count` vectors: about sqrt(n) lists, never more shards than lists."""
    shards = max(1, min(nshards, count))
    nlist = max(shards, min(count, round(float(np.sqrt(count)))))
    return nlist, shards


def _build_dense(
    staging: Path, count: int, settings: CollectionSettings, comm: Communicator, say: Say
) -> None:
    """hpcrag's IVF over the generation's embeddings (collective over `comm`), ids = chunk ids."""
    from hpcrag.search import BuildOptions, Metric, build_index

    nlist, nshards = dense_layout(count, max(settings.nshards, comm.size))
    options = BuildOptions(nlist=nlist, nshards=nshards, metric=Metric.IP, dtype="float32")
    build_index(staging / "embeddings.npy", staging / "dense", options, staging / "chunk_ids.npy", comm)
    say(f"dense index: {count:,} chunks in {nlist} lists over {nshards} shards ({comm.size} ranks)")
