"""Extract: one file in (HTML, Markdown, plain text, a roff manual page, PDF), its sections out.

`extract` picks the reader by suffix (`.N.gz` manual pages are unzipped first) and sniffs the content
where the suffix is missing or does not match it. Every reader returns sections in document order with
their heading path and anchor; text is NFC-normalised, free of control characters and, outside code
blocks, of runs of spaces. Anything that cannot be read raises `ExtractError` naming the file and the fix.
"""

from __future__ import annotations

import gzip
import os
import re
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hpcrag.errors import HpcragError
from hpcrag.rag.types import ExtractedDocument, Section

if TYPE_CHECKING:
    from selectolax.lexbor import LexborHTMLParser, LexborNode

_HTML = (".html", ".htm", ".shtml")
_MARKDOWN = (".md", ".markdown")
_TEXT = (".txt", ".text", ".rst")
_MAN = tuple(f".{n}" for n in range(1, 10))  # and with a letter suffix (.3pm, .1ssl): see _is_man
SUPPORTED_SUFFIXES: frozenset[str] = frozenset((*_HTML, *_MARKDOWN, *_TEXT, *_MAN, ".pdf"))

# C0/C1 controls other than \t and \n, plus the invisible soft hyphen, zero-width space and BOM.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u200b\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")
_WHITESPACE = re.compile(r"\s+")
_TITLE_MAX = 100  # a first line longer than this is a paragraph, not a title


class ExtractError(HpcragError):
    """A file that cannot be turned into text: missing, unreadable, empty, binary or of an unknown type."""


def is_supported(path: Path) -> bool:
    """Whether `extract` reads this file by its name: a supported suffix, or a gzipped manual page."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".gz"]:
        return len(suffixes) > 1 and _is_man(suffixes[-2])
    return path.suffix.lower() in SUPPORTED_SUFFIXES or _is_man(path.suffix.lower())


def _is_man(suffix: str) -> bool:
    """A manual page section suffix: .1 to .9, optionally with letters (.3pm, .1ssl)."""
    return re.fullmatch(r"\.[1-9][a-z]{0,8}", suffix) is not None


def extract(path: Path) -> ExtractedDocument:
    """The sections of one file; raises ExtractError for anything that cannot be read as a document."""
    path = Path(path)
    data = _read(path)
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


def _stem(path: Path) -> str:
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    return Path(name).stem or name


def _read(path: Path) -> bytes:
    if path.is_dir():
        raise ExtractError(f"{path} is a directory; pass the files in it (or ingest the folder)")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ExtractError(f"{path} does not exist; check the path") from None
    except OSError as exc:
        raise ExtractError(f"cannot read {path} ({exc.strerror}); check that it is a readable file") from None
    if not data.strip():
        raise ExtractError(f"{path} is empty; add content or leave it out")
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


# ---------------------------------------------------------------------------------------------- HTML

_DROP_TAGS = "script, style, noscript, template, svg, nav, iframe, object, button, select"
_DROP_ROLES = frozenset({"navigation", "banner", "contentinfo", "search"})
_CHROME_WORDS = frozenset(
    {"nav", "navbar", "navigation", "sidebar", "menu", "menubar", "footer", "header", "masthead",
     "breadcrumb", "breadcrumbs", "search", "skip"}
)  # fmt: skip
_CHROME_TAGS = frozenset({"div", "section", "aside", "ul", "ol", "menu"})
_LINK_BLOCK_TAGS = "ul, ol, dl, menu, table, div, section, aside"
_LINK_RATIO = 0.8
_LINK_MIN = 3
_BLOCK_TAGS = frozenset(
    {"p", "div", "section", "article", "main", "aside", "blockquote", "figure", "figcaption", "center",
     "form", "fieldset", "address", "details", "summary", "hr", "dd", "dt", "caption", "body", "legend"}
)  # fmt: skip
_SKIP_TAGS = frozenset({"head", "img", "input", "textarea", "-comment"})
_HEADING = re.compile(r"h([1-6])")
_BLOCKS_IN_HEADING = frozenset({"table", "pre", "ul", "ol", "dl", "p", "div", "blockquote", "h1", "h2", "h3",
                                "h4", "h5", "h6"})  # fmt: skip
_SEPARATOR = re.compile(r"\s+(?:[-|\u2013\u2014\u00b7:]{1,2})\s+")


def _html(text: str, stem: str) -> tuple[str, list[Section]]:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(text)
    title_node = tree.css_first("title")
    raw_title = title_node.text(deep=True) if title_node is not None else ""
    site_names = _site_names(tree)
    _decompose(tree.css(_DROP_TAGS))
    # The site's banner and footer; an article's own <header> (its title, its byline) is content.
    _decompose([n for n in tree.css("header, footer") if not n.css_matches("main *, article *")])
    mains = tree.css("main, [role=main]")
    root = mains[0] if len(mains) == 1 else tree.body
    if root is None:
        return stem, []
    _drop_chrome(root)
    _drop_link_blocks(root)
    walker = _HtmlWalker()
    walker.walk(root)
    walker.flush()
    walker.out.close()
    h1 = root.css_first("h1")
    first_h1 = _inline(h1) if h1 is not None else ""
    return _html_title(raw_title, site_names, first_h1) or stem, walker.out.sections


def _site_names(tree: LexborHTMLParser) -> set[str]:
    """Names of the site a page belongs to, as the page itself states them (metadata, its home link)."""
    names = set()
    for node in tree.css('meta[property="og:site_name"], meta[name="application-name"]'):
        names.add(_squash(node.attributes.get("content") or "").lower())
    for node in tree.css('a[rel="home"]'):
        names.add(_squash(node.text(deep=True)).lower())
    return names - {""}


def _html_title(raw: str, site_names: set[str], first_h1: str) -> str:
    """<title> without the site's name (the part matching the first h1 wins), else the first h1."""
    parts = [p for p in (_squash(p) for p in _SEPARATOR.split(f" {_squash(raw)} ")) if p]
    for part in parts:
        if first_h1 and part.lower() == first_h1.lower():
            return part
    kept = [p for p in parts if p.lower() not in site_names]
    if kept:
        return " - ".join(kept)
    return first_h1


def _is_chrome(node: LexborNode) -> bool:
    attrs = node.attributes
    if (attrs.get("role") or "").lower() in _DROP_ROLES or "hidden" in attrs:
        return True
    if node.tag not in _CHROME_TAGS:
        return False
    names = f"{attrs.get('id') or ''} {attrs.get('class') or ''}".lower()
    words = set(re.split(r"[\s_-]+", names))
    # A block carrying the page's h1 is the page header, whatever its class says.
    return bool(words & _CHROME_WORDS) and node.css_first("h1") is None


def _drop_chrome(root: LexborNode) -> None:
    _decompose([node for node in root.css("[id], [class], [role], [hidden]") if _is_chrome(node)])


def _decompose(nodes: list[LexborNode]) -> None:
    """Remove nodes, outermost only: a node inside one already removed must not be touched again."""
    removed = {node.mem_id for node in nodes}
    for node in [n for n in nodes if not any(a in removed for a in _ancestors(n))]:
        node.decompose()


def _visible_len(text: str) -> int:
    return len(_WHITESPACE.sub("", text))


def _drop_link_blocks(root: LexborNode) -> None:
    """Drop blocks that are mostly links, unless together they are most of the page (a list of docs)."""
    total = _visible_len(root.text(deep=True))
    dropped: list[LexborNode] = []
    dropped_len = 0
    seen: set[int] = set()
    for node in root.css(_LINK_BLOCK_TAGS):
        if any(ancestor in seen for ancestor in _ancestors(node)):
            continue
        links = node.css("a[href]")
        in_page = all((a.attributes.get("href") or "").startswith("#") for a in links)
        if len(links) < (2 if in_page else _LINK_MIN):  # two links within the page already make a TOC
            continue
        length = _visible_len(node.text(deep=True))
        linked = sum(_visible_len(a.text(deep=True)) for a in links)
        if length and linked / length > _LINK_RATIO:
            dropped.append(node)
            dropped_len += length
            seen.add(node.mem_id)
    if dropped_len * 2 < total:
        _decompose(dropped)


def _ancestors(node: LexborNode) -> Iterator[int]:
    parent = node.parent
    while parent is not None:
        yield parent.mem_id
        parent = parent.parent


def _inline(node: LexborNode) -> str:
    """The text of a node as one line: tags joined without separators, blocks and breaks as spaces."""
    return _inline_of(node.iter(include_text=True))


def _inline_of(nodes: Iterable[LexborNode]) -> str:
    parts: list[str] = []

    def visit(children: Iterable[LexborNode]) -> None:
        for child in children:
            if child.tag == "-text":
                parts.append(child.text_content or "")
            elif child.tag in ("br", "td", "th", "li") or child.tag in _BLOCK_TAGS:
                parts.append(" ")
                visit(child.iter(include_text=True))
                parts.append(" ")
            elif child.tag not in _SKIP_TAGS:
                visit(child.iter(include_text=True))

    visit(nodes)
    return _WHITESPACE.sub(" ", "".join(parts)).strip()


def _named_anchor(node: LexborNode) -> str | None:
    """The id of the node, or of the first element inside it with an id (or an <a name>)."""
    if node.attributes.get("id"):
        return node.attributes["id"]
    inner = node.css_first("[id], a[name]")
    if inner is None:
        return None
    return inner.attributes.get("id") or inner.attributes.get("name")


class _HtmlWalker:
    """Walks the content tree in order, turning it into blocks and sections."""

    def __init__(self) -> None:
        self.out = _Builder()
        self.inline: list[str] = []
        self.bullet: str | None = None  # the marker of the list item whose first text is pending
        self.list_depth = 0
        self.dl_depth = 0
        self.pending_anchor: str | None = None  # an empty <a name> seen since the last text

    def flush(self) -> None:
        text = _squash("".join(self.inline))
        self.inline = []
        if not text:
            return
        if self.bullet is not None:
            text = self.bullet + text
            self.bullet = None
        self.out.block(text)
        self.pending_anchor = None

    def walk(self, node: LexborNode) -> None:
        for child in node.iter(include_text=True):
            self.visit(child)

    def visit(self, node: LexborNode) -> None:
        tag = node.tag
        if tag == "-text":
            self.inline.append(_WHITESPACE.sub(" ", node.text_content or ""))
        elif tag == "br":
            self.inline.append("\n")
        elif tag in _SKIP_TAGS:
            return
        elif _HEADING.fullmatch(tag):
            self.heading(node, float(tag[1]))
        elif tag == "pre":
            self.flush()
            self.out.block(_verbatim(node.text(deep=True)))
            self.pending_anchor = None
        elif tag in ("ul", "ol", "menu"):
            self.list(node, numbered=tag == "ol")
        elif tag == "li":  # an item outside any list is still an item
            self.item(node, "- ")
        elif tag == "table":
            self.table(node)
        elif tag == "dl":
            self.definitions(node)
        elif tag == "dt":
            self.term(node)
        elif tag == "p":
            self.paragraph(node)
        elif tag == "a":
            self.link(node)
        elif tag in _BLOCK_TAGS:
            self.block(node)
        else:
            self.walk(node)

    def block(self, node: LexborNode) -> None:
        self.flush()
        self.walk(node)
        self.flush()

    def heading(self, node: LexborNode, level: float, anchor: str | None = None) -> None:
        self.flush()
        children = list(node.iter(include_text=True))
        # A heading left open (<h4>..<h4>) swallows what follows: its text ends at the first block.
        cut = next((i for i, c in enumerate(children) if c.tag in _BLOCKS_IN_HEADING), len(children))
        text = _inline_of(children[:cut])
        if text:
            self.out.heading(level, text, anchor or _named_anchor(node) or self.pending_anchor)
            self.pending_anchor = None
        for child in children[cut:]:
            self.visit(child)

    def real_level(self) -> float:
        """Level of the innermost true heading (h1-h6); 0 before any."""
        levels = [level for level, _, _ in self.out.stack if level.is_integer()]
        return levels[-1] if levels else 0.0

    def list(self, node: LexborNode, *, numbered: bool) -> None:
        self.flush()
        self.list_depth += 1
        start = (node.attributes.get("start") or "").strip()
        number = int(start) if re.fullmatch(r"-?\d{1,9}", start) else 1
        for child in node.iter(include_text=True):
            if child.tag == "li":
                marker = f"{number}. " if numbered else "- "
                number += 1
                self.item(child, "  " * (self.list_depth - 1) + marker)
            else:
                self.visit(child)
        self.flush()
        self.list_depth -= 1

    def item(self, node: LexborNode, marker: str) -> None:
        self.flush()
        self.bullet = marker
        self.walk(node)
        self.flush()
        self.bullet = None

    def table(self, node: LexborNode) -> None:
        self.flush()
        rows = [[_inline(cell) for cell in _cells(row)] for row in _rows(node)]
        if all(len(row) <= 1 for row in rows) or node.css_first("pre, h1, h2, h3, h4, h5, h6"):
            # One column, or headings and code inside: a layout table; its cells are ordinary content.
            for row in _rows(node):
                for cell in _cells(row):
                    self.block(cell)
            return
        lines = [" | ".join(row) for row in rows if any(row)]
        if lines:
            self.out.block("\n".join(lines))
            self.pending_anchor = None

    def definitions(self, node: LexborNode) -> None:
        """A definition list; terms carrying an anchor become headings that end with the list."""
        self.flush()
        depth = len(self.out.stack)
        self.dl_depth += 1
        self.walk(node)
        self.flush()
        self.dl_depth -= 1
        self.out.truncate(depth)

    def term(self, node: LexborNode) -> None:
        anchor = _named_anchor(node)
        if anchor and self.dl_depth and _inline(node):
            self.heading(node, self.real_level() + min(self.dl_depth, 9) / 10, anchor)
        else:
            self.block(node)

    def paragraph(self, node: LexborNode) -> None:
        """A paragraph; one that opens with an anchored bold phrase (a FAQ question) is a heading."""
        self.flush()
        children = [c for c in node.iter(include_text=True) if c.tag != "-comment"]
        first = next((i for i, c in enumerate(children) if c.tag != "-text" or c.text_content.strip()), None)
        if first is not None and _is_question(children[first]):
            self.heading(children[first], self.real_level() + 0.5)
            children = children[first + 1 :]
        for child in children:
            self.visit(child)
        self.flush()

    def link(self, node: LexborNode) -> None:
        name = node.attributes.get("id") or node.attributes.get("name")
        if name and not _inline(node):
            self.pending_anchor = name
        self.walk(node)


def _is_question(node: LexborNode) -> bool:
    """An anchor (not a link) around bold text: how FAQ pages mark their questions."""
    attrs = node.attributes
    return (
        node.tag == "a"
        and "href" not in attrs
        and bool(attrs.get("id") or attrs.get("name"))
        and node.css_first("b, strong") is not None
        and bool(_inline(node))
    )


def _rows(table: LexborNode) -> Iterator[LexborNode]:
    """The rows of this table, not of tables nested in its cells."""
    for child in table.iter():
        if child.tag == "tr":
            yield child
        elif child.tag in ("thead", "tbody", "tfoot"):
            yield from (row for row in child.iter() if row.tag == "tr")


def _cells(row: LexborNode) -> Iterator[LexborNode]:
    return (cell for cell in row.iter() if cell.tag in ("td", "th"))


# ------------------------------------------------------------------------------------------ Markdown

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


# ---------------------------------------------------------------------------------------- Plain text


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


def _leading(line: str) -> str:
    """A line's indentation, kept: in plain text it is often the only structure there is."""
    return line[: len(line) - len(line.lstrip())]


# --------------------------------------------------------------------------------------- Manual pages

_ROFF_GLYPHS = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "bu": "\u2022", "aq": "'", "dq": '"', "lq": "\u201c",
    "rq": "\u201d", "oq": "\u2018", "cq": "\u2019", "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122",
    "mu": "\u00d7", "di": "\u00f7", "+-": "\u00b1", "<=": "\u2264", ">=": "\u2265", "!=": "\u2260",
    "->": "\u2192", "<-": "\u2190", "ti": "~", "ha": "^", "ga": "`", "sl": "/", "rs": "\\", "ba": "|",
    "de": "\u00b0", "sc": "\u00a7", "ps": "\u00b6", "Fo": "\u00ab", "Fc": "\u00bb", "at": "@", "sh": "#",
    "Do": "$", "lB": "[", "rB": "]", "lC": "{", "rC": "}", "ul": "_", "mi": "-", "pl": "+", "eq": "=",
}  # fmt: skip
_ROFF_STRINGS = {"lq": "\u201c", "rq": "\u201d", "R": "\u00ae", "Tm": "\u2122"}
_ROFF_ESCAPE = re.compile(
    r"""\\(?:
        \((?P<glyph2>..) | \[(?P<glyph>[^\]]*)\]            # \(xx and \[name] glyphs
      | \*(?:\((?P<str2>..)|\[(?P<strn>[^\]]*)\]|(?P<str1>.))  # \*x strings
      | f(?:\(..|\[[^\]]*\]|.)                            # font changes
      | s[-+]?(?:\d|\(\d\d|\[\d+\]) | [nkgmMYV](?:\(..|\[[^\]]*\]|.)  # size, registers, colours
      | [hvwlLDNoxbXZ]'[^']*'                              # motions and the like
      | (?P<char>.)
    )""",
    re.VERBOSE,
)
_ROFF_CONTINUATION = re.compile(r"(?<!\\)\\\n")  # a backslash ending a line joins the next one
_ROFF_END_MACRO = re.compile(r"^[.']\s*\.\s*$")
_ROFF_COMMENT = re.compile(r'\\".*$')
_ROFF_CHARS = {
    "-": "-",
    "e": "\\",
    "\\": "\\",
    " ": " ",
    "~": " ",
    "0": " ",
    "'": "\u00b4",
    "`": "`",
    ".": ".",
}
_ROFF_FONT_MACROS = frozenset({"B", "I", "SM", "SB"})
_ROFF_ALTERNATING = frozenset({"BR", "RB", "BI", "IB", "IR", "RI"})
_ROFF_BREAKS = frozenset({"PP", "P", "LP", "sp", "RS", "RE", "HP", "PD", "in", "ne"})
_ROFF_SKIP_UNTIL_DOTS = frozenset({"de", "de1", "ig", "am"})


def _roff_escape(match: re.Match[str]) -> str:
    if match.group("glyph2") is not None or match.group("glyph") is not None:
        name = match.group("glyph2") or match.group("glyph")
        if name.startswith("u") and re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
            return chr(int(name[1:], 16))
        return _ROFF_GLYPHS.get(name, "")
    string = match.group("str2") or match.group("strn") or match.group("str1")
    if string is not None:
        return _ROFF_STRINGS.get(string, "")
    char = match.group("char")
    return _ROFF_CHARS.get(char, "") if char is not None else ""


def _roff_text(text: str) -> str:
    """A roff line as plain text: escapes resolved, font changes dropped."""
    return _ROFF_ESCAPE.sub(_roff_escape, text)


def _roff_args(rest: str) -> list[str]:
    """A request's arguments: space separated, double quotes group ("" is a literal quote)."""
    return [
        quoted.replace('""', '"') if bare is None else bare
        for quoted, bare in (m.groups(None) for m in re.finditer(r'"((?:[^"]|"")*)"?|((?:\\.|\S)+)', rest))
    ]


def _man(text: str, stem: str) -> tuple[str, list[Section]]:
    out = _Builder()
    title = ""
    filled: list[str] = []  # the lines of the paragraph being filled
    item_tag: str | None = None  # the tag of the current .TP/.IP item, put before its first paragraph
    verbatim: list[str] | None = None
    take_tag = False  # the next text line is a .TP tag
    take_heading: float | None = None  # the next text line is the .SH/.SS heading
    skip_until_dots = False
    lines = iter(_ROFF_CONTINUATION.sub("", text).split("\n"))

    def flush() -> None:
        nonlocal item_tag
        if not filled:
            return
        body = _squash(" ".join(filled))
        filled.clear()
        if item_tag is not None:
            body = item_tag + body if item_tag.endswith(" ") else f"{item_tag}\n{body}"
            item_tag = None
        out.block(body)

    def pending_tag() -> None:
        """A tag with no paragraph after it (yet) is a block of its own, before what comes next."""
        nonlocal item_tag
        flush()
        if item_tag is not None:
            out.block(item_tag.rstrip())
            item_tag = None

    def set_tag(tag: str) -> None:
        nonlocal item_tag
        pending_tag()
        tag = _squash(tag)
        if tag in ("\u2022", "-", "*", "o", "\u00b7"):
            item_tag = "- "
        elif re.fullmatch(r"\(?\w{1,3}[.)]", tag):
            item_tag = tag + " "
        else:
            item_tag = tag or None

    for raw in lines:
        raw = _ROFF_COMMENT.sub("", raw)
        if skip_until_dots:
            skip_until_dots = _ROFF_END_MACRO.match(raw) is None
            continue
        if raw.startswith((".", "'")):
            request, _, rest = raw[1:].lstrip().partition(" ")
            request = request.strip()
            if verbatim is not None and request not in ("fi", "EE"):
                if request in ("br", "sp"):
                    verbatim.append("")
                elif request in _ROFF_FONT_MACROS:
                    verbatim.append(_roff_text(" ".join(_roff_args(rest))))
                continue
            if not request:
                continue
            if request in _ROFF_SKIP_UNTIL_DOTS:
                skip_until_dots = True
            elif request == "TH":
                args = _roff_args(_roff_text(rest))
                title = f"{args[0]}({args[1]})" if len(args) > 1 else (args[0] if args else "")
            elif request in ("SH", "SS"):
                pending_tag()
                level = 1.0 if request == "SH" else 2.0
                heading = _squash(_roff_text(" ".join(_roff_args(rest))))
                if heading:
                    out.heading(level, heading, None)
                else:
                    take_heading = level
            elif request == "TP":
                flush()
                take_tag = True
            elif request == "IP":
                args = _roff_args(rest)
                if args and _roff_text(args[0]).strip():
                    set_tag(_roff_text(args[0]))
                else:
                    flush()
            elif request in ("nf", "EX"):
                pending_tag()
                verbatim = []
            elif request in ("fi", "EE"):
                if verbatim is not None:
                    flush()
                    out.block(_verbatim("\n".join(verbatim)))
                verbatim = None
            elif request in _ROFF_FONT_MACROS or request in _ROFF_ALTERNATING:
                args = _roff_args(rest)
                joiner = (
                    " " if request in _ROFF_FONT_MACROS else ""
                )  # .BR a b sets a and b apart only by font
                line = _roff_text(joiner.join(args)) if args else _roff_text(next(lines, ""))
                if take_tag:
                    take_tag = False
                    set_tag(line)
                else:
                    filled.append(line)
            elif request == "br":
                if filled:
                    filled.append("\n")
            elif request in _ROFF_BREAKS:
                flush()
            continue
        if verbatim is not None:
            verbatim.append(_roff_text(raw))
            continue
        line = _roff_text(raw)
        if take_heading is not None:
            if line.strip():
                out.heading(take_heading, _squash(line), None)
                take_heading = None
            continue
        if take_tag:
            if line.strip():
                take_tag = False
                set_tag(line)
            continue
        if not line.strip():
            flush()
            continue
        if raw.startswith((" ", "\t")) and filled:
            filled.append("\n")
        filled.append(line)
    pending_tag()
    if verbatim:
        out.block(_verbatim("\n".join(verbatim)))
    out.close()
    return title or stem, out.sections


# ----------------------------------------------------------------------------------------------- PDF


def _pdf(path: Path, data: bytes) -> tuple[str, list[Section]]:
    import io
    import logging

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # pypdf warns about every small flaw it repairs
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ExtractError(f"{path} is an encrypted PDF; give a copy without a password")
        title = _squash(_clean(str((reader.metadata or {}).get("/Title") or "")))
        sections = []
        for number, page in enumerate(reader.pages, start=1):
            text = _squash(_clean(page.extract_text() or ""))
            sections.append(Section((f"Page {number}",), f"page={number}", text))
    except ExtractError:
        raise
    except Exception as exc:  # a damaged file can make pypdf fail in many ways, not only with PyPdfError
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ExtractError(f"{path} is not a readable PDF ({reason}); re-export or repair it") from None
    if not any(s.text for s in sections):
        raise ExtractError(f"{path} has no text layer (a scan?); run OCR on it first")
    return title or _stem(path), sections


_READERS: dict[str, Callable[[str, str], tuple[str, list[Section]]]] = {
    "html": _html,
    "markdown": _markdown,
    "text": _text,
    "man": _man,
}
