"""The FAQ evaluation set: questions out of the corpus, answers as known items; the QA file schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcrag.rag.evalset import (
    EvalSetError,
    QaItem,
    RelevantRef,
    build_slurm_faq_set,
    load_qa,
    normalise,
)

SLURM_HTML = Path("/usr/share/doc/slurm-wlm/html")

FAQ = """<!DOCTYPE html>
<html><head><meta charset="UTF-8"><title>FAQ</title></head><body>
<h1><a id="top">Frequently Asked Questions</a></h1>
<h2>For Users</h2>
<ul>
<li><a href="#pending">Why is my job
  not running?</a></li>
<li><a href="#short">Is there a mailing list?</a></li>
<li><a href="#listed">How critical is a highly available database?</a></li>
</ul>
<h2>For Users</h2>
<p><a id="pending"><b>Why is my job
not running?</b></a><br>
The answer to this question depends on a lot of factors. The main one is which
scheduler is used by <span class="commandline">Slurm</span>. More text follows here.</p>
<ul><li>Also read the <a href="#listed">database notes</a> before asking.</li></ul>
<p><a id="short"><b>Is there a mailing list?</b></a><br>
Yes.</p>
<p><a id="listed"><b>How critical is a highly available database?</b></a><br>
<ul>
<li>Consider if you really need a high-availability MySQL setup at all &mdash; usually not.</li>
</ul>
</body></html>
"""


@pytest.fixture
def html_dir(tmp_path: Path) -> Path:
    source = tmp_path / "html dir"
    source.mkdir()
    (source / "faq.html").write_text(FAQ)
    (source / "quickstart.html").write_bytes(
        b"<html><body><p>Why is my job not running?\xc2\xa0See faq.</p></body></html>"
    )
    (source / "arch.gif").write_bytes(b"GIF89a")
    return source


def test_builds_the_corpus_copy_and_the_qa_file(html_dir: Path, tmp_path: Path) -> None:
    corpus, qa = tmp_path / "out" / "corpus", tmp_path / "out" / "qa.jsonl"
    summary = build_slurm_faq_set(html_dir, corpus, qa)

    assert (summary.pages_copied, summary.questions_found, summary.items_written) == (2, 3, 2)
    assert summary.skipped_short == ("short",)
    assert summary.skipped_indistinct == ()
    assert sorted(p.name for p in corpus.iterdir()) == ["faq.html", "quickstart.html"]  # no temp files left
    assert (corpus / "quickstart.html").read_bytes() == (html_dir / "quickstart.html").read_bytes()

    records = [json.loads(line) for line in qa.read_text().splitlines()]
    assert records == [
        {
            "id": "faq-pending",
            "question": "Why is my job not running?",
            "relevant": [
                {
                    "source": "faq.html",
                    "contains": "the answer to this question depends on a lot of factors. "
                    "the main one is which scheduler is used by slurm.",
                }
            ],
            "answer_anchor": "pending",
        },
        {
            "id": "faq-listed",
            "question": "How critical is a highly available database?",
            # The answer is a list: the snippet stays inside its first item.
            "relevant": [
                {
                    "source": "faq.html",
                    "contains": "consider if you really need a high-availability mysql setup at all "
                    "— usually not.",
                }
            ],
            "answer_anchor": "listed",
        },
    ]
    assert [item.id for item in load_qa(qa)] == ["faq-pending", "faq-listed"]


def test_the_written_faq_keeps_answers_under_neutral_headings_without_questions(
    html_dir: Path, tmp_path: Path
) -> None:
    build_slurm_faq_set(html_dir, tmp_path / "corpus", tmp_path / "qa.jsonl")
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser((tmp_path / "corpus" / "faq.html").read_text())
    text = normalise(tree.body.text(deep=True))
    for question in ("why is my job not running?", "is there a mailing list?", "how critical is a highly"):
        assert question not in text
    assert [(h.tag, h.attributes["id"], h.text()) for h in tree.css("h3")] == [
        ("h3", "pending", "Answer"),
        ("h3", "short", "Answer"),
        ("h3", "listed", "Answer"),
    ]
    # The question list and its heading went; the answers' section heading and in-answer links stay.
    assert [h.text() for h in tree.css("h2")] == ["For Users"]
    assert "also read the database notes before asking." in text
    assert "the answer to this question depends" in text


def test_refuses_a_folder_without_faq_and_writing_over_the_source(html_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EvalSetError, match=r"faq\.html: not found; install Debian's slurm-wlm-doc"):
        build_slurm_faq_set(tmp_path / "nowhere", tmp_path / "c", tmp_path / "q.jsonl")
    with pytest.raises(EvalSetError, match="is the source folder"):
        build_slurm_faq_set(html_dir, html_dir, tmp_path / "q.jsonl")
    assert (html_dir / "faq.html").read_text() == FAQ


def _write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_qa_accepts_hand_written_items_with_snippets_or_anchors(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '{"id": "1", "question": "How do I drain a node?", "relevant": [{"source": "faq.html", '
        '"contains": "  To safely   REMOVE a node"}]}',
        "",
        '{"id": "2", "question": "What is a QOS?", "relevant": [{"source": "qos.html", "anchor": "limits"}], '
        '"answer_anchor": "limits"}',
    )
    first, second = load_qa(path)
    assert first == QaItem(
        "1", "How do I drain a node?", (RelevantRef("faq.html", contains="to safely remove a node"),)
    )
    assert second.answer_anchor == "limits"
    # Relevance: same file name (any folder), then snippet in the normalised text or anchor equality.
    assert first.is_relevant("/corpus/faq.html", "Q.\n To  safely remove a node from a system", None)
    assert not first.is_relevant("/corpus/other.html", "to safely remove a node", None)
    assert not first.is_relevant("faq.html", "to remove a node safely", None)
    assert second.is_relevant("/x/qos.html", "anything", "limits")
    assert not second.is_relevant("/x/qos.html", "limits", "other")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "1", "question": "q"', "qa.jsonl:2: not valid JSON"),
        ('["id"]', "qa.jsonl:2: expected a JSON object"),
        ('{"question": "q", "relevant": []}', "qa.jsonl:2: 'id' is missing"),
        ('{"id": "2", "question": "q", "relevant": []}', "qa.jsonl:2: 'relevant' is missing or empty"),
        (
            '{"id": "2", "question": "q", "relevant": [{"source": "faq.html"}]}',
            r"relevant\[0\]: give 'contains'",
        ),
        (
            '{"id": "2", "question": "q", "relevant": [{"source": "a/faq.html", "anchor": "x"}]}',
            "without a folder",
        ),
        (
            '{"id": "1", "question": "q", "relevant": [{"source": "f.html", "anchor": "x"}]}',
            "id '1' is used twice",
        ),
    ],
)
def test_load_qa_names_the_line_and_the_problem(tmp_path: Path, line: str, message: str) -> None:
    good = '{"id": "1", "question": "q", "relevant": [{"source": "f.html", "anchor": "x"}]}'
    with pytest.raises(EvalSetError, match=message):
        load_qa(_write(tmp_path, good, line))


def test_load_qa_refuses_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(EvalSetError, match="no such QA file"):
        load_qa(tmp_path / "absent.jsonl")
    with pytest.raises(EvalSetError, match="holds no questions"):
        load_qa(_write(tmp_path, ""))


@pytest.mark.skipif(not (SLURM_HTML / "faq.html").is_file(), reason="Debian's slurm-wlm-doc is not installed")
def test_real_slurm_faq(tmp_path: Path) -> None:
    from selectolax.lexbor import LexborHTMLParser

    summary = build_slurm_faq_set(SLURM_HTML, tmp_path / "corpus", tmp_path / "qa.jsonl")
    items = load_qa(summary.qa_path)
    # slurm-wlm-doc 22.05 has 108 FAQ entries, all with identifiable answers.
    assert 90 <= len(items) <= 130
    assert (
        len(items) + len(summary.skipped_short) + len(summary.skipped_indistinct) == summary.questions_found
    )
    assert summary.pages_copied == len(list(SLURM_HTML.glob("*.html")))

    original = LexborHTMLParser((SLURM_HTML / "faq.html").read_text())
    listed = [normalise(link.text()) for link in original.css('li > a[href^="#"]')]
    written = LexborHTMLParser((summary.corpus_dir / "faq.html").read_text())
    text = normalise(written.body.text(deep=True))
    assert [item.question for item in items if normalise(item.question) in text] == []
    # Only list entries that are links inside answers ("see PAM in Slurm") may survive.
    assert [q for q in listed if q in text] == ["pam in slurm"]
    snippets = [item.relevant[0].contains or "" for item in items]
    assert [s for s in snippets if s not in text] == []
    assert all(40 <= len(s) <= 120 for s in snippets)


def test_the_cli_writes_the_set_and_says_what_it_wrote(html_dir: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hpcrag.cli.main import cli

    out = tmp_path / "eval set"
    result = CliRunner().invoke(cli, ["rag", "eval-set", str(out), "--html-dir", str(html_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"wrote {out / 'corpus'} (2 pages, the FAQ's question text removed) and {out / 'qa.jsonl'} "
        "(2 of 3 FAQ questions; 1 skipped: answers too short or not distinct)",
        f"next: hpcrag rag ingest NAME {out / 'corpus'} && hpcrag rag eval NAME {out / 'qa.jsonl'}",
    ]
    assert len(load_qa(out / "qa.jsonl")) == 2
