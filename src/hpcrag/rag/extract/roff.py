"""The manual page reader: roff source (man macros) as sections under its .SH and .SS headings.

Escapes become their characters, font changes go, .TP/.IP items keep their tags and .nf/.EX blocks stay
verbatim; the title is the page's name and section from .TH.
"""

from __future__ import annotations

import re

from hpcrag.rag.extract.common import _Builder, _squash, _verbatim
from hpcrag.rag.types import Section

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
