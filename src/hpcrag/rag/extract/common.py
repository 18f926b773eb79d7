"""Helpers every reader of the extract package shares: the section builder, text cleaning, decoding.

`_clean` and `_decode` give NFC text with Unix line ends and no control characters; `_squash` and
`_verbatim` lay out prose and code; `_Builder` turns blocks and headings into sections in document order.
Every failure raises `ExtractError` naming the file and the fix.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from hpcrag.errors import HpcragError
from hpcrag.rag.types import Section

# C0/C1 controls other than \t and \n, plus the invisible soft hyphen, zero-width space and BOM.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u200b\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")


class ExtractError(HpcragError):
    """A file that cannot be turned into text: missing, unreadable, empty, binary or of an unknown type."""


def _stem(path: Path) -> str:
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    return Path(name).stem or name


def _decode(path: Path, data: bytes, *, latin1: bool) -> str:
    if b"\x00" in data:
        raise ExtractError(f"{path} contains NUL bytes (binary or UTF-16), not text; convert it to UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        if not latin1:
            raise ExtractError(f"{path} is not valid UTF-8 text; re-save it as UTF-8") from None
        text = data.decode("latin-1")
    return _clean(text)


def _clean(text: str) -> str:
    """NFC, Unix line ends, no control characters (line structure and spacing are left to the readers)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", unicodedata.normalize("NFC", text))


def _squash(text: str) -> str:
    """Prose: runs of spaces become one; line breaks stay, blank and edge whitespace go."""
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def _verbatim(text: str) -> str:
    """Code: every line as written, without trailing spaces and without blank edge lines."""
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def _leading(line: str) -> str:
    """A line's indentation, kept: in plain text it is often the only structure there is."""
    return line[: len(line) - len(line.lstrip())]


@dataclass
class _Builder:
    """Collects blocks into sections as headings arrive; a heading is (level, text, anchor)."""

    sections: list[Section] = field(default_factory=list)
    stack: list[tuple[float, str, str | None]] = field(default_factory=list)
    anchor: str | None = None
    blocks: list[str] = field(default_factory=list)

    def block(self, text: str) -> None:
        if text:
            self.blocks.append(text)

    def heading(self, level: float, text: str, anchor: str | None) -> None:
        self.close()
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        self.stack.append((level, text, anchor))
        self.anchor = anchor

    def truncate(self, depth: int) -> None:
        """Back to the first `depth` headings: the text that follows belongs to the enclosing one."""
        if len(self.stack) > depth:
            self.close()
            del self.stack[depth:]
            self.anchor = self.stack[-1][2] if self.stack else None

    def close(self) -> None:
        if self.blocks:
            path = tuple(text for _, text, _ in self.stack)
            self.sections.append(Section(path, self.anchor, "\n\n".join(self.blocks)))
        self.blocks = []
