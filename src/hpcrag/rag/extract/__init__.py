"""Extract: one file in (HTML, Markdown, plain text, a roff manual page, PDF), its sections out.

`extract` picks the reader by suffix (`.N.gz` manual pages are unzipped first) and sniffs the content
where the suffix is missing or does not match it. Every reader returns sections in document order with
their heading path and anchor; text is NFC-normalised, free of control characters and, outside code
blocks, of runs of spaces. Anything that cannot be read raises `ExtractError` naming the file and the fix.
Importing the package is cheap: selectolax and pypdf load only when an HTML page or a PDF is read.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Callable
from pathlib import Path

from hpcrag.rag.extract.common import ExtractError, _decode, _stem
from hpcrag.rag.extract.html import _html
from hpcrag.rag.extract.markdown import _markdown
from hpcrag.rag.extract.pdf import _pdf
from hpcrag.rag.extract.roff import _man
from hpcrag.rag.extract.text import _text
from hpcrag.rag.types import ExtractedDocument, Section

__all__ = ["SUPPORTED_SUFFIXES", "ExtractError", "extract", "is_supported"]

_HTML = (".html", ".htm", ".shtml")
_MARKDOWN = (".md", ".markdown")
_TEXT = (".txt", ".text", ".rst")
_MAN = tuple(f".{n}" for n in range(1, 10))  # and with a letter suffix (.3pm, .1ssl): see _is_man
SUPPORTED_SUFFIXES: frozenset[str] = frozenset((*_HTML, *_MARKDOWN, *_TEXT, *_MAN, ".pdf"))


def is_supported(path: Path) -> bool:
    """Whether `extract` reads this file by its name: a supported suffix, or a gzipped manual page."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".gz"]:
        return len(suffixes) > 1 and _is_man(suffixes[-2])
    return path.suffix.lower() in SUPPORTED_SUFFIXES or _is_man(path.suffix.lower())


def _is_man(suffix: str) -> bool:
    """A manual page section suffix: .1 to .9, optionally with letters (.3pm, .1ssl)."""
    return re.fullmatch(r"\.[1-9][a-z]{0,8}", suffix) is not None


def extract(path: Path, *, data: bytes | None = None) -> ExtractedDocument:
    """The sections of one file; raises ExtractError for anything that cannot be read as a document.

    `data`, when given, is the file's content as the caller already read it and is used instead of
    reading the file again, so what is extracted is exactly what the caller hashed or stored.
    """
    path = Path(path)
    data = _read(path) if data is None else data
    if not data.strip():
        raise ExtractError(f"{path} is empty; add content or leave it out")
    suffix = path.suffix.lower()
    if suffix == ".gz":
        data = _gunzip(path, data)
        suffix = Path(path.stem).suffix.lower()
    fmt = _format(path, suffix, data)
    source = os.path.abspath(path)
    if fmt == "pdf":
        title, sections = _pdf(path, data)
    else:
        text = _decode(path, data, latin1=fmt in ("html", "man"))
        title, sections = _READERS[fmt](text, _stem(path))
    sections = [s for s in sections if s.text]
    if not sections:
        raise ExtractError(f"{path} has no text to index ({fmt}); check that the file has content")
    return ExtractedDocument(source=source, title=title, format=fmt, sections=sections)


def _read(path: Path) -> bytes:
    if path.is_dir():
        raise ExtractError(f"{path} is a directory; pass the files in it (or ingest the folder)")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ExtractError(f"{path} does not exist; check the path") from None
    except OSError as exc:
        raise ExtractError(f"cannot read {path} ({exc.strerror}); check that it is a readable file") from None
    return data


def _gunzip(path: Path, data: bytes) -> bytes:
    try:
        data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error):
        raise ExtractError(
            f"{path} is not a valid gzip file; re-compress it or give the plain file"
        ) from None
    if not data.strip():
        raise ExtractError(f"{path} is empty once unzipped; add content or leave it out")
    return data


def _format(path: Path, suffix: str, data: bytes) -> str:
    """The reader for `data`: by suffix, confirmed or (without a known suffix) decided by sniffing."""
    head = data[:4096].lstrip()
    if head.startswith(b"%PDF-"):
        return "pdf"
    if suffix == ".pdf":
        raise ExtractError(f"{path} does not start like a PDF (%PDF-); re-export it as PDF")
    looks_html = re.match(rb"(?i)(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)\b", head, re.S) is not None
    looks_roff = re.search(rb"(?m)^\.(TH|SH|\\\")", head) is not None
    if suffix in _HTML:
        return "html"
    if suffix in _MARKDOWN:
        return "markdown"
    if _is_man(suffix):
        return "man" if looks_roff else "text"
    if suffix in _TEXT or suffix == "":
        return "html" if looks_html else "man" if looks_roff else "text"
    raise ExtractError(
        f"{path} has an unsupported type {suffix!r}; convert it to one of "
        f"{', '.join(sorted(SUPPORTED_SUFFIXES))} or leave it out"
    )


_READERS: dict[str, Callable[[str, str], tuple[str, list[Section]]]] = {
    "html": _html,
    "markdown": _markdown,
    "text": _text,
    "man": _man,
}
