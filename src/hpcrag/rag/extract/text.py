"""The plain text reader: one section of paragraphs, each line's indentation kept.

The first line is the title unless it is too long to be one; then the file name is.
"""

from __future__ import annotations

import re

from hpcrag.rag.extract.common import _SPACES, _leading
from hpcrag.rag.types import Section

_TITLE_MAX = 100  # a first line longer than this is a paragraph, not a title


def _text(text: str, stem: str) -> tuple[str, list[Section]]:
    paragraphs = []
    for chunk in re.split(r"\n[^\S\n]*\n", text):
        lines = [_leading(line) + _SPACES.sub(" ", line.strip()) for line in chunk.split("\n")]
        block = "\n".join(line for line in lines if line.strip())
        if block:
            paragraphs.append(block)
    first = next((line.strip() for line in text.split("\n") if line.strip()), "")
    title = first if len(first) <= _TITLE_MAX else stem
    return title, [Section((), None, "\n\n".join(paragraphs))]
