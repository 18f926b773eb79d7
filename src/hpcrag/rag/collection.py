"""A named collection on disk: generations swapped atomically, so a reader never sees half an ingest.

    COLLECTION/
      collection.json        the current generation and what built it (replaced by rename)
      gen-000007/
        store.sqlite         documents and chunks (`store.py`)
        embeddings.npy       float32 (chunks, dim), row order
        dense/               hpcrag's IVF over the embeddings, ids = chunk ids
        bm25/                the sparse index, ids = chunk ids
      .lock                  held by the one ingest that may run at a time

The embedding cache (`embeddings.sqlite`, keyed by embedder and text) sits beside the collections and
is shared by them: a page ingested into two collections is embedded once.

An ingest writes `gen-N+1` beside the current one and then replaces `collection.json`; a failed
ingest leaves only a temporary folder that the next ingest removes. The previous generation is kept
until the one after, so a reader that opened it a moment before the swap can still finish.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from hpcrag.config.rag_schema import COLLECTION_NAME_PATTERN
from hpcrag.errors import HpcragError
from hpcrag.paths import repo_root
from hpcrag.util.files import write_atomic

MANIFEST = "collection.json"
FORMAT_VERSION = 1
_NAME = re.compile(COLLECTION_NAME_PATTERN)


@dataclass(frozen=True)
class CollectionManifest:
    format_version: int
    name: str
    generation: int
    embedder: str
    dim: int
    tier: str
    chunk_tokens: int
    overlap_tokens: int
    documents: int
    chunks: int
    updated_at: float


def collections_root(configured: str) -> Path:
    """`$HPCRAG_RAG_DIR`, else rag.yaml's `collections_dir` (relative to the repository)."""
    chosen = Path(os.environ.get("HPCRAG_RAG_DIR") or configured).expanduser()
    return chosen if chosen.is_absolute() else repo_root() / chosen


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise HpcragError(
            f"bad collection name {name!r}: use 1-64 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class Collection:
    """One collection's folder; `current()` says which generation readers use."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = check_name(name)
        self.path = root / name

    @property
    def cache_path(self) -> Path:
        return self.path.parent / "embeddings.sqlite"

    def exists(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def manifest(self) -> CollectionManifest:
        """The current generation's manifest; a clear error when the collection does not exist."""
        file = self.path / MANIFEST
        if not file.is_file():
            root = self.path.parent
            known = (
                sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file()) if root.is_dir() else []
            )
            raise HpcragError(
                f"no collection {self.name!r} in {root} (collections: {', '.join(known) or 'none'}); "
                f"create it with `hpcrag rag ingest {self.name} PATH...`"
            )
        try:
            data = json.loads(file.read_text())
            manifest = CollectionManifest(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise HpcragError(
                f"{file} is damaged ({exc}); re-ingest the collection into a new name"
            ) from None
        if manifest.format_version != FORMAT_VERSION:
            raise HpcragError(
                f"{file} has format {manifest.format_version}, this hpcrag reads {FORMAT_VERSION}; re-ingest"
            )
        return manifest

    def generation_path(self, generation: int) -> Path:
        return self.path / f"gen-{generation:06d}"

    def current_path(self) -> Path:
        path = self.generation_path(self.manifest().generation)
        if not path.is_dir():
            raise HpcragError(f"collection {self.name!r}: generation folder {path} is missing; re-ingest")
        return path

    @contextmanager
    def ingest_lock(self) -> Iterator[None]:
        """Held for a whole ingest: a second ingest of the same collection is refused, not interleaved."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.path / ".lock", "w")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise HpcragError(
                f"cannot write collection {self.name!r} in {self.path}: {exc.strerror or exc}"
            ) from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise HpcragError(
                    f"collection {self.name!r} is being ingested by another process; wait for it to finish"
                ) from None
            yield

    def new_generation(self) -> tuple[int, Path]:
        """A fresh temporary folder for the next generation (call under `ingest_lock`)."""
        for stale in self.path.glob("gen-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        current = self.manifest().generation if self.exists() else 0
        # A folder above the current generation is one whose publish was cut short: never reuse its number.
        numbers = [int(p.name[4:]) for p in self.path.glob("gen-[0-9]*") if p.name[4:].isdigit()]
        generation = max([current, *numbers]) + 1
        staging = self.path / f"gen-{generation:06d}.tmp"
        try:
            staging.mkdir(parents=True)
        except OSError as exc:
            raise HpcragError(
                f"cannot write collection {self.name!r} in {self.path}: {exc.strerror or exc}"
            ) from None
        return generation, staging

    def publish(self, staging: Path, manifest: CollectionManifest) -> None:
        """Make `staging` the current generation; drop every other one but the previous."""
        final = self.generation_path(manifest.generation)
        previous = self.manifest().generation if self.exists() else None
        try:
            staging.rename(final)
            write_atomic(self.path / MANIFEST, json.dumps(asdict(manifest), indent=2) + "\n")
        except OSError as exc:
            raise HpcragError(
                f"cannot publish generation {manifest.generation} of collection {self.name!r}: "
                f"{exc.strerror or exc}; the collection is left as it was"
            ) from None
        for old in self.path.glob("gen-[0-9]*"):
            number = old.name.removeprefix("gen-")
            if number.isdigit() and int(number) not in (manifest.generation, previous):
                shutil.rmtree(old, ignore_errors=True)


def list_collections(root: Path) -> list[CollectionManifest]:
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        if (folder / MANIFEST).is_file() and _NAME.match(folder.name):
            found.append(Collection(root, folder.name).manifest())
    return found
