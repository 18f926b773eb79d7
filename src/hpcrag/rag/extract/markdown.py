"""The Markdown reader: ATX and setext headings open sections anchored by GitHub's slugs.

Fenced and indented code stay verbatim, lists keep their markers and nesting, tables their rows; links and
images become their text and YAML front matter is left out.
"""

from __future__ import annotations

import re

from hpcrag.rag.extract.common import _Builder, _leading, _squash, _verbatim
from hpcrag.rag.types import Section

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_ITEM = re.compile(r"^(\s*)(?:[-*+]|(\d{1,9})[.)])[ \t]+(.*)$")
_RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")


def _markdown(text: str, stem: str) -> tuple[str, list[Section]]:
    out = _Builder()
    slugs: dict[str, int] = {}
    title = ""
    paragraph: list[str] = []
    table: list[str] = []
    lines = _front_matter(text.split("\n"))
    index = 0

    def flush() -> None:
        if paragraph:
            out.block(_leading(paragraph[0]) + _inline_markdown(" ".join(paragraph)))  # nested items stay
            paragraph.clear()
        if table:
            out.block("\n".join(table))
            table.clear()

    def heading(level: int, raw: str) -> None:
        nonlocal title
        flush()
        text = _inline_markdown(raw)
        if text:
            out.heading(level, text, _slug(text, slugs))
            title = title or (text if level == 1 else "")

    while index < len(lines):
        line = lines[index]
        index += 1
        if fence := _FENCE.match(line):
            flush()
            closing = re.compile(rf"^ {{0,3}}{re.escape(fence.group(1)[0])}{{{len(fence.group(1))},}}\s*$")
            code = []
            while index < len(lines) and not closing.match(lines[index]):
                code.append(lines[index])
                index += 1
            index += 1  # past the closing fence (or the end of the file)
            out.block(_verbatim("\n".join(code)))
        elif atx := _ATX.match(line):
            heading(len(atx.group(1)), atx.group(2) or "")
        elif (setext := _SETEXT.match(line)) and len(paragraph) == 1 and not _ITEM.match(paragraph[0]):
            heading(1 if setext.group(1)[0] == "=" else 2, paragraph.pop())
        elif not line.strip() or _RULE.match(line):
            flush()
        elif line.startswith(("    ", "\t")) and not paragraph and not table:
            code = [line]
            while index < len(lines) and (
                lines[index].startswith(("    ", "\t")) or not lines[index].strip()
            ):
                code.append(lines[index])
                index += 1
            out.block(_verbatim("\n".join(c[4:] if c.startswith("    ") else c[1:] for c in code)))
        elif item := _ITEM.match(line):
            flush()
            indent = "  " * (len(item.group(1).expandtabs(4)) // 2)
            paragraph.append(f"{indent}{item.group(2) + '.' if item.group(2) else '-'} {item.group(3)}")
        elif line.lstrip().startswith("|"):
            if paragraph:
                flush()
            if not _TABLE_RULE.match(line):
                table.append(
                    _inline_markdown(" | ".join(c.strip() for c in line.strip().strip("|").split("|")))
                )
        else:
            if table:
                flush()
            paragraph.append(re.sub(r"^\s*>\s?", "", line))
    flush()
    out.close()
    return title or stem, out.sections


def _front_matter(lines: list[str]) -> list[str]:
    """Lines without a leading YAML front matter block."""
    if lines and lines[0].strip() == "---":
        for end in range(1, len(lines)):
            if lines[end].strip() in ("---", "..."):
                return lines[end + 1 :]
    return lines


def _inline_markdown(text: str) -> str:
    """Links and images as their text; the rest of the inline markup stays (it reads fine)."""
    return _squash(_LINK.sub(r"\1", _IMAGE.sub(r"\1", text)))


def _slug(text: str, seen: dict[str, int]) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces as '-', repeats numbered."""
    slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    return f"{slug}-{count}" if count else slug
