"""The HTML reader: a page's content as sections, without its navigation, banners and link lists.

Headings (and anchored definition terms and FAQ questions) open sections that carry their anchor; lists,
tables and code keep their layout. selectolax is imported only when a page is read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from hpcrag.rag.extract.common import _Builder, _squash, _verbatim
from hpcrag.rag.types import Section

if TYPE_CHECKING:
    from selectolax.lexbor import LexborHTMLParser, LexborNode

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
_WHITESPACE = re.compile(r"\s+")


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
