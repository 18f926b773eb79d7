"""extract: every format's sections, headings, anchors and code; bad files fail with a one-line fix."""

from __future__ import annotations

import gzip
import os
import unicodedata
from pathlib import Path

import pytest
from selectolax.lexbor import LexborHTMLParser

from hpcrag.rag.extract import SUPPORTED_SUFFIXES, ExtractError, extract, is_supported

SLURM_HTML = Path("/usr/share/doc/slurm-wlm/html")
SBATCH_MAN = Path("/usr/share/man/man1/sbatch.1.gz")
needs_slurm_docs = pytest.mark.skipif(not SLURM_HTML.is_dir(), reason="slurm-wlm-doc is not installed")

PAGE = """<!DOCTYPE html>
<html><head><title>Site Name - Job Guide</title><style>p {color: red}</style>
<script>var x = "<h2>not a heading</h2>";</script></head>
<body>
<header><a href="/" rel="home">Site Name</a><h1>Site Name</h1></header>
<nav><ul><li><a href="a.html">A</a></li><li><a href="b.html">B</a></li></ul></nav>
<div class="sidebar-menu"><p>Sidebar text</p></div>
<div class="content">
<h1 id="top">Job Guide</h1>
<p>Intro   with
   spaces &amp; entities.</p>
<h2 id="submit">Submitting</h2>
<p>Use <b>sbatch</b> to<br>submit.</p>
<pre>#!/bin/bash
#SBATCH --nodes=2
    srun   hostname</pre>
<ul><li>first item</li><li>second <i>item</i><ul><li>nested</li></ul></li></ul>
<ol start="3"><li>third</li><li>fourth</li></ol>
<a name="limits"></a>
<h3>Limits</h3>
<table><tr><th>Name</th><th>Value</th></tr><tr><td>MaxTime</td><td>1-00:00:00</td></tr></table>
<dl>
<dt><b>--time</b>=&lt;time&gt;<a class="slurm_link" id="OPT_time" href="#OPT_time"></a></dt>
<dd>Set a limit on the total run time.</dd>
<dt><b>--mem</b><a id="OPT_mem"></a></dt><dd>Memory per node.</dd>
</dl>
<p>After the options.</p>
<h2>Questions</h2>
<p><a id="why"><b>Why is my job pending?</b></a><br>Because the cluster is busy.</p>
<p>Check squeue.</p>
<div><a href="x.html">one</a> <a href="y.html">two</a> <a href="z.html">three</a></div>
</div>
<footer><p>Legal notices</p></footer>
</body></html>
"""


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def section(doc, *heading_path):
    matches = [s for s in doc.sections if s.heading_path == heading_path]
    assert matches, f"no section {heading_path}; have {[s.heading_path for s in doc.sections]}"
    return matches[0]


# -- HTML ---------------------------------------------------------------------------------------------


def test_html_keeps_structure_and_drops_navigation(tmp_path: Path) -> None:
    doc = extract(write(tmp_path, "guide.html", PAGE))
    assert doc.format == "html"
    assert doc.title == "Job Guide"
    assert doc.source == os.path.abspath(tmp_path / "guide.html")
    paths = [s.heading_path for s in doc.sections]
    assert paths == [
        ("Job Guide",),
        ("Job Guide", "Submitting"),
        ("Job Guide", "Submitting", "Limits"),
        ("Job Guide", "Submitting", "Limits", "--time=<time>"),
        ("Job Guide", "Submitting", "Limits", "--mem"),
        ("Job Guide", "Submitting", "Limits"),
        ("Job Guide", "Questions", "Why is my job pending?"),
    ]
    text = doc.text
    for chrome in (
        "Sidebar text",
        "Legal notices",
        "not a heading",
        "color: red",
        "one two three",
        "Site Name",
    ):
        assert chrome not in text
    assert section(doc, "Job Guide").text == "Intro with spaces & entities."
    assert section(doc, "Job Guide", "Submitting").text == "\n\n".join(
        [
            "Use sbatch to\nsubmit.",
            "#!/bin/bash\n#SBATCH --nodes=2\n    srun   hostname",
            "- first item",
            "- second item",
            "  - nested",
            "3. third",
            "4. fourth",
        ]
    )


def test_html_anchors_tables_terms_and_questions(tmp_path: Path) -> None:
    doc = extract(write(tmp_path, "guide.html", PAGE))
    anchors = [(s.heading_path[-1], s.anchor) for s in doc.sections]
    assert anchors == [
        ("Job Guide", "top"),
        ("Submitting", "submit"),
        ("Limits", "limits"),  # an <a name> just before the heading
        ("--time=<time>", "OPT_time"),
        ("--mem", "OPT_mem"),
        ("Limits", "limits"),  # text after the definition list belongs to the heading again
        ("Why is my job pending?", "why"),
    ]
    assert doc.sections[2].text == "Name | Value\nMaxTime | 1-00:00:00"
    assert doc.sections[3].text == "Set a limit on the total run time."
    assert doc.sections[5].text == "After the options."
    assert doc.sections[6].text == "Because the cluster is busy.\n\nCheck squeue."


def test_html_page_that_is_a_list_of_links_keeps_them(tmp_path: Path) -> None:
    items = "".join(f'<li><a href="doc{i}.html">Guide number {i}</a></li>' for i in range(8))
    page = f"<html><body><h1>Documentation</h1><p>All guides.</p><ul>{items}</ul></body></html>"
    doc = extract(write(tmp_path, "index.html", page))
    assert "- Guide number 0" in doc.text and "- Guide number 7" in doc.text


def test_html_title_fallbacks(tmp_path: Path) -> None:
    def title(html: str, name: str = "page.html") -> str:
        return extract(write(tmp_path, name, html)).title

    home = '<header><a rel="home" href="/">Slurm Workload Manager</a></header>'
    assert title(f"<title>Slurm Workload Manager - </title>{home}<h1>Accounting</h1><p>x</p>") == "Accounting"
    assert title(f"<title>sbatch - Slurm Workload Manager</title>{home}<h1>Other</h1><p>x</p>") == "sbatch"
    assert title("<title>Guide | Site</title><h1>Guide</h1><p>x</p>") == "Guide"
    assert title("<h1>Only <i>a</i> heading</h1><p>x</p>") == "Only a heading"
    assert title("<p>no title at all</p>", "plain-page.html") == "plain-page"


def test_html_latin1_fallback_and_unicode_cleaning(tmp_path: Path) -> None:
    doc = extract(write(tmp_path, "old.html", "<p>caf\xe9 na\xefve</p>".encode("latin-1")))
    assert doc.text == "café naïve"
    decomposed = unicodedata.normalize("NFD", "<p>café\x07 zero\u200bwidth</p><pre>a\x01\tb  c</pre>")
    doc = extract(write(tmp_path, "nfd.html", decomposed))
    assert doc.text == "café zerowidth\n\na\tb  c"
    assert unicodedata.is_normalized("NFC", doc.text)


def test_html_unclosed_heading_keeps_following_content(tmp_path: Path) -> None:
    table = "<table><tr><td>new</td><td>x.y</td></tr></table>"
    page = f"<h2>Changes</h2><h4>Add field<h4>{table}<h4>Next</h4><p>z</p>"
    doc = extract(write(tmp_path, "notes.html", page))
    assert section(doc, "Changes", "Add field").text == "new | x.y"
    assert section(doc, "Changes", "Next").text == "z"


# -- Markdown ---------------------------------------------------------------------------------------


MARKDOWN = """---
title: ignored front matter
---
# Cluster Guide

Intro paragraph
over two lines with [a link](http://x.org) and ![img](i.png).

Setext Section
--------------

- item one
  continued
* item two
  1. nested number

```bash
# a comment, not a heading
srun   -N2 hostname
```

## Tables & More

| Partition | Limit |
|-----------|-------|
| debug     | 30m   |

    indented code
        keeps indentation

Second H1
=========

## Tables & More
text
"""


def test_markdown_headings_code_lists_tables(tmp_path: Path) -> None:
    doc = extract(write(tmp_path, "guide.md", MARKDOWN))
    assert doc.format == "markdown"
    assert doc.title == "Cluster Guide"
    assert [(s.heading_path, s.anchor) for s in doc.sections] == [
        (("Cluster Guide",), "cluster-guide"),
        (("Cluster Guide", "Setext Section"), "setext-section"),
        (("Cluster Guide", "Tables & More"), "tables--more"),
        (("Second H1", "Tables & More"), "tables--more-1"),
    ]
    assert doc.sections[0].text == "Intro paragraph over two lines with a link and img."
    assert doc.sections[1].text == (
        "- item one continued\n\n- item two\n\n  1. nested number\n\n"
        "# a comment, not a heading\nsrun   -N2 hostname"
    )
    assert doc.sections[2].text == "Partition | Limit\ndebug | 30m\n\nindented code\n    keeps indentation"
    assert doc.sections[3].text == "text"
    assert "ignored front matter" not in doc.text


def test_markdown_without_heading_takes_the_file_name(tmp_path: Path) -> None:
    doc = extract(write(tmp_path, "notes.markdown", "just text\n\nmore text\n"))
    assert doc.title == "notes"
    assert doc.sections[0].heading_path == ()
    assert doc.sections[0].text == "just text\n\nmore text"


# -- Plain text -----------------------------------------------------------------------------------------


def test_text_is_one_section_of_paragraphs(tmp_path: Path) -> None:
    doc = extract(
        write(tmp_path, "readme.txt", "Cluster  notes\n\n\nFirst   para\nline two\n\n  indented   line\n")
    )
    assert (doc.format, doc.title) == ("text", "Cluster  notes")
    assert [s.heading_path for s in doc.sections] == [()]
    assert doc.sections[0].text == "Cluster notes\n\nFirst para\nline two\n\n  indented line"
    long_first = "word " * 40
    assert extract(write(tmp_path, "long.rst", long_first)).title == "long"
    assert extract(write(tmp_path, "NOTES", "Plain file\nno suffix\n")).format == "text"


# -- Manual pages ---------------------------------------------------------------------------------------


ROFF = r""".\" a comment
.TH sjob "1" "May 2024" "Tools" "User Commands"
.SH "NAME"
sjob \- submit a \fBjob\fR to the \fIcluster\fP
.SH SYNOPSIS
.B sjob
[\fIOPTIONS\fR]
.SH OPTIONS
.TP
\fB\-N\fR, \fB\-\-nodes\fR=<\fIcount\fR>
Number of nodes \(em at least one.
Second line of the same paragraph.
.IP
Another paragraph of the item.
.TP
.B \-v
Verbose.
.SS "Bullets"
.IP \(bu 2
first bullet
.IP \(bu 2
second bullet
.SH EXAMPLES
Run it:
.nf
$ sjob \-N2   script.sh
    indented \fBbold\fR
.fi
Done\(tm \e back.
"""


def test_man_page_sections_items_and_verbatim(tmp_path: Path) -> None:
    doc = extract(write(tmp_path, "sjob.1", ROFF))
    assert (doc.format, doc.title) == ("man", "sjob(1)")
    assert [s.heading_path for s in doc.sections] == [
        ("NAME",),
        ("SYNOPSIS",),
        ("OPTIONS",),
        ("OPTIONS", "Bullets"),
        ("EXAMPLES",),
    ]
    assert doc.sections[0].text == "sjob - submit a job to the cluster"
    assert doc.sections[1].text == "sjob [OPTIONS]"
    assert doc.sections[2].text == (
        "-N, --nodes=<count>\nNumber of nodes \u2014 at least one. Second line of the same paragraph.\n\n"
        "Another paragraph of the item.\n\n-v\nVerbose."
    )
    assert doc.sections[3].text == "- first bullet\n\n- second bullet"
    assert (
        doc.sections[4].text == "Run it:\n\n$ sjob -N2   script.sh\n    indented bold\n\nDone\u2122 \\ back."
    )


def test_gzipped_man_page_and_sniffing(tmp_path: Path) -> None:
    gz = write(tmp_path, "sjob.1.gz", gzip.compress(ROFF.encode()))
    assert extract(gz).title == "sjob(1)"
    assert extract(write(tmp_path, "sjob", ROFF)).format == "man"  # no suffix: sniffed
    assert extract(write(tmp_path, "page", "<!DOCTYPE html><h1>T</h1><p>x</p>")).format == "html"
    assert extract(write(tmp_path, "notes.3", "not roff at all\n")).format == "text"


@pytest.mark.skipif(not SBATCH_MAN.exists(), reason="slurm-client's sbatch(1) is not installed")
def test_real_sbatch_man_page() -> None:
    doc = extract(SBATCH_MAN)
    assert doc.title == "sbatch(1)"
    heads = [s.heading_path for s in doc.sections]
    assert ("OPTIONS",) in heads and ("EXAMPLES",) in heads
    options = section(doc, "OPTIONS").text
    assert options.startswith(
        "-A, --account=<account>\nCharge resources used by this job to specified account."
    )
    assert "\\f" not in doc.text and "\\-" not in doc.text
    assert "$ cat myscript\n#!/bin/sh\n#SBATCH --time=1\nsrun hostname |sort" in section(doc, "EXAMPLES").text


# -- PDF ------------------------------------------------------------------------------------------------


def tiny_pdf(pages: list[str], title: str = "Tiny Manual") -> bytes:
    """A valid PDF with one line of Helvetica text per page, written by hand (no PDF library writes text)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (b" ".join(b"%d 0 R" % (5 + 2 * i) for i in range(len(pages))), len(pages)),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Title (%s) >>" % title.encode(),
    ]
    for i, text in enumerate(pages):
        stream = b"BT /F1 12 Tf 72 720 Td (%s) Tj ET" % text.encode()
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (6 + 2 * i)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 4 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def test_pdf_one_section_per_page(tmp_path: Path) -> None:
    doc = extract(write(tmp_path, "manual.pdf", tiny_pdf(["Hello cluster users", "Second page text"])))
    assert (doc.format, doc.title) == ("pdf", "Tiny Manual")
    assert [(s.heading_path, s.anchor, s.text) for s in doc.sections] == [
        (("Page 1",), "page=1", "Hello cluster users"),
        (("Page 2",), "page=2", "Second page text"),
    ]


def test_pdf_without_text_or_broken(tmp_path: Path) -> None:
    with pytest.raises(ExtractError, match="no text layer"):
        extract(write(tmp_path, "scan.pdf", tiny_pdf([""])))
    with pytest.raises(ExtractError, match="not a readable PDF"):
        extract(write(tmp_path, "broken.pdf", b"%PDF-1.4\n1 0 obj garbage"))
    with pytest.raises(ExtractError, match="does not start like a PDF"):
        extract(write(tmp_path, "fake.pdf", "plain text"))


# -- Bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.md", b"", "is empty"),
        ("blank.txt", b"  \n\n \t", "is empty"),
        ("binary.txt", b"text\x00\x01\x02more", "contains NUL bytes"),
        ("bad.md", "caf\xe9".encode("latin-1"), "not valid UTF-8"),
        ("image.png", b"\x89PNG\r\n", "unsupported type '.png'"),
        ("bad.1.gz", b"not gzip", "not a valid gzip file"),
        ("nav.html", b"<nav><a href='a'>a</a></nav>", "no text to index"),
    ],
)
def test_bad_files_raise_one_line_errors(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(ExtractError, match=message) as caught:
        extract(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_missing_directory_and_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ExtractError, match="does not exist"):
        extract(tmp_path / "missing.md")
    with pytest.raises(ExtractError, match="is a directory"):
        extract(tmp_path)
    locked = write(tmp_path, "locked.md", "# secret")

    def denied(self: Path) -> bytes:  # chmod 000 does not stop root, who may run this
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ExtractError, match=r"cannot read .*locked.md \(Permission denied\); check"):
        extract(locked)


def test_given_bytes_are_extracted_instead_of_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "guide.md", "# On disk\n\nold text\n")
    doc = extract(path, data=b"# In memory\n\nnew text\n")
    assert (doc.source, doc.title) == (os.path.abspath(path), "In memory")
    assert [(s.heading_path, s.text) for s in doc.sections] == [(("In memory",), "new text")]
    with pytest.raises(ExtractError, match=r"guide\.md is empty"):
        extract(path, data=b" \n")


def test_supported_suffixes() -> None:
    assert {
        ".html",
        ".htm",
        ".shtml",
        ".md",
        ".markdown",
        ".txt",
        ".rst",
        ".pdf",
        ".1",
        ".8",
    } <= SUPPORTED_SUFFIXES
    assert is_supported(Path("sbatch.1.gz")) and is_supported(Path("Foo::Bar.3pm"))
    assert is_supported(Path("Guide.HTML"))
    assert not is_supported(Path("files.tar.gz")) and not is_supported(Path("logo.png"))


# -- The real corpus: Debian's slurm-wlm-doc --------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm_docs() -> dict[str, object]:
    return {path.name: extract(path) for path in sorted(SLURM_HTML.glob("*.html"))}


@needs_slurm_docs
def test_slurm_docs_keep_their_headings_and_code(slurm_docs: dict[str, object]) -> None:
    """Headings and <pre> blocks of the content (site header, menu and footer aside) survive extraction."""
    headings = kept_headings = blocks = kept_blocks = 0
    for name, doc in slurm_docs.items():
        tree = LexborHTMLParser((SLURM_HTML / name).read_bytes())
        for node in tree.css("header, nav, footer"):
            node.decompose()
        paths = {heading for s in doc.sections for heading in s.heading_path}
        for node in tree.css("h1, h2, h3, h4, h5, h6"):
            text = " ".join(node.text(deep=True).split())
            if text and not node.css_first("table, pre, ul, p"):  # not an unclosed <h4> holding a table
                headings += 1
                kept_headings += text in paths
        for node in tree.css("pre"):
            code = "\n".join(line.rstrip() for line in node.text(deep=True).split("\n")).strip("\n")
            if code.strip():
                blocks += 1
                kept_blocks += code in doc.text
    assert headings > 1500 and blocks > 500
    assert kept_blocks == blocks
    # The few lost have no text of their own: "Contents" over a dropped link list, an empty "SEE ALSO".
    assert kept_headings >= 0.99 * headings


@needs_slurm_docs
def test_slurm_pages_read_well(slurm_docs: dict[str, object]) -> None:
    quickstart = slurm_docs["quickstart.html"]
    assert quickstart.title == "Quick Start User Guide"
    assert section(quickstart, "Quick Start User Guide", "Overview").anchor == "overview"
    assert "Navigation" not in quickstart.text and "Legal Notices" not in quickstart.text

    faq = slurm_docs["faq.html"]
    pending = section(faq, "Frequently Asked Questions", "For Users", "Why is my job not running?")
    assert pending.anchor == "pending"
    assert "scontrol show config | grep SchedulerType" in pending.text
    assert not any(s.heading_path[-1] == "For Users" for s in faq.sections)  # its question list is a TOC

    sbatch = slurm_docs["sbatch.html"]
    account = section(sbatch, "sbatch", "OPTIONS", "-A, --account=<account>")
    assert account.anchor == "OPT_account"
    assert account.text.startswith("Charge resources used by this job to specified account.")
    # man2html's index at the end is a list of in-page links: dropped, its heading keeps only the colophon.
    assert section(sbatch, "sbatch", "Index").text.startswith("This document was created by man2html")

    documentation = slurm_docs["documentation.html"]
    assert "- Quick Start User Guide" in section(documentation, "Documentation", "Slurm Users").text
