"""The values that flow between RAG stages: extracted documents, chunks, retrieved candidates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class Section:
    """One section of a document: its heading path (outermost first), anchor and body text.

    The body keeps paragraphs, list items and code blocks as separate blocks (joined by blank lines);
    code blocks keep their line breaks and indentation.
    """

    heading_path: tuple[str, ...]
    anchor: str | None
    text: str


@dataclass(frozen=True)
class ExtractedDocument:
    source: str  # absolute path of the file it came from
    title: str
    format: str  # html | markdown | text | man | pdf
    sections: list[Section]

    @property
    def text(self) -> str:
        return "\n\n".join(section.text for section in self.sections if section.text)


@dataclass(frozen=True)
class ChunkText:
    """A piece of one document sized for the embedder, before it gets an id."""

    position: int  # 0-based order within the document
    text: str  # the chunk's own text (what a reader sees)
    heading_path: tuple[str, ...]
    anchor: str | None
    token_count: int  # tokens of `embed_text` in the embedder's tokenizer, special tokens excluded
    embed_text: str  # title and heading path, then the text: what is embedded and BM25-indexed
    metadata: dict[str, Any] = field(default_factory=dict)


class TokenCounter(Protocol):
    """The embedder's own tokenizer, as far as chunking needs it."""

    def count(self, text: str) -> int:
        """Word pieces of `text`, without special tokens."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each word piece of `text`, in order, without special tokens."""


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors."""

    @property
    def name(self) -> str:
        """Identity of the model and its settings: part of the embedding cache key."""

    @property
    def dim(self) -> int: ...

    @property
    def max_tokens(self) -> int:
        """Longest input, in word pieces without special tokens, that is embedded without truncation."""

    def tokenizer(self) -> TokenCounter: ...

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row of unit length."""
