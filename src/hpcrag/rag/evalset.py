"""Evaluation sets for retrieval: questions, each with the chunks that answer it.

A QA file is JSON Lines, one question per line (blank lines are ignored)::

    {"id": "faq-comp", "question": "Why is my job/node in a COMPLETING state?",
     "relevant": [{"source": "faq.html", "contains": "when a job is terminating, both the job"}],
     "answer_anchor": "comp"}

- ``id`` (string, unique) and ``question`` (string) are required.
- ``relevant`` (non-empty list) says which chunks answer the question. Each item names ``source``, the
  file name of a document (no directory), and ``contains`` (a text snippet) or ``anchor`` (a section
  anchor) or both. A chunk is relevant when its document's file name equals ``source`` and either its
  text, whitespace-normalised and case-folded, contains the equally normalised ``contains``, or its
  anchor equals ``anchor``. A question is answered by any of its items.
- ``answer_anchor`` (string or null, optional) is informational: where the answer lives.

`build_slurm_faq_set` makes such a set from a real corpus: the Slurm HTML documentation (Debian's
slurm-wlm-doc). Every FAQ question becomes a QA item whose known answer is the first sentence of its
answer, and the corpus copy has the question text removed, so that retrieval cannot match it verbatim.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcrag.errors import HpcragError
from hpcrag.util.files import atomic_output, write_atomic

FAQ_PAGE = "faq.html"
MIN_ANSWER_CHARS = 40  # shorter answers ("Yes.") cannot be told apart from other text
SNIPPET_MIN_CHARS = 60
SNIPPET_MAX_CHARS = 120
# Every answer gets this same heading: it gives each answer its own section (so a chunk never starts
# mid-way through an answer's first sentence) while adding no words that point at one question.
NEUTRAL_HEADING = "Answer"
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_CONTAINERS = frozenset({"ul", "ol", "dl", "blockquote", "div", "table", "thead", "tbody", "tr", "center"})
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


class EvalSetError(HpcragError):
    """A QA file or a corpus folder that cannot be used as an evaluation set."""


def normalise(text: str) -> str:
    """Whitespace collapsed to single spaces, case-folded: the form in which snippets are compared."""
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class RelevantRef:
    """One way a chunk can be relevant: by a snippet of its text, by its section anchor, or both."""

    source: str
    contains: str | None = None  # normalised
    anchor: str | None = None

    def matches(self, source: str, text: str, anchor: str | None) -> bool:
        """Whether a chunk of document `source` (a path or file name) with this text and anchor matches."""
        if Path(source).name != self.source:
            return False
        if self.contains is not None and self.contains in normalise(text):
            return True
        return self.anchor is not None and anchor == self.anchor

    def to_dict(self) -> dict[str, str]:
        out = {"source": self.source}
        if self.contains is not None:
            out["contains"] = self.contains
        if self.anchor is not None:
            out["anchor"] = self.anchor
        return out


@dataclass(frozen=True)
class QaItem:
    id: str
    question: str
    relevant: tuple[RelevantRef, ...]
    answer_anchor: str | None = None

    def is_relevant(self, source: str, text: str, anchor: str | None) -> bool:
        """Whether a chunk (its document's path or file name, its text, its anchor) answers the question."""
        return any(ref.matches(source, text, anchor) for ref in self.relevant)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question": self.question,
            "relevant": [ref.to_dict() for ref in self.relevant],
            "answer_anchor": self.answer_anchor,
        }


@dataclass(frozen=True)
class FaqSetSummary:
    pages_copied: int  # every *.html of the source folder, faq.html included
    questions_found: int
    items_written: int
    skipped_short: tuple[str, ...]  # anchors of answers under MIN_ANSWER_CHARS
    # anchors with no block of MIN_ANSWER_CHARS, or whose snippet also occurs in another answer
    skipped_indistinct: tuple[str, ...]
    corpus_dir: Path
    qa_path: Path


def load_qa(path: Path) -> list[QaItem]:
    """The QA items of a JSONL file in the schema of this module's docstring, in file order."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EvalSetError(
            f"{path}: no such QA file; write one (see hpcrag.rag.evalset) or build the Slurm FAQ set"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise EvalSetError(
            f"{path}: cannot read the QA file ({error}); check its permissions and encoding"
        ) from None
    items: list[QaItem] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise EvalSetError(
                f"{path}:{number}: not valid JSON ({error.msg}); each line must be one JSON object"
            ) from None
        item = _parse_item(record, f"{path}:{number}")
        if item.id in seen:
            raise EvalSetError(
                f"{path}:{number}: id {item.id!r} is used twice; give each question its own id"
            )
        seen.add(item.id)
        items.append(item)
    if not items:
        raise EvalSetError(f"{path}: the QA file holds no questions; add one JSON object per line")
    return items


def _parse_item(record: object, where: str) -> QaItem:
    if not isinstance(record, dict):
        raise EvalSetError(f"{where}: expected a JSON object with id, question and relevant")
    for key in ("id", "question"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise EvalSetError(f"{where}: {key!r} is missing or not a non-empty string; add it")
    refs = record.get("relevant")
    if not isinstance(refs, list) or not refs:
        raise EvalSetError(f"{where}: 'relevant' is missing or empty; list at least one {{source, contains}}")
    anchor = record.get("answer_anchor")
    if anchor is not None and not isinstance(anchor, str):
        raise EvalSetError(f"{where}: 'answer_anchor' must be a string or null")
    return QaItem(
        id=record["id"],
        question=record["question"],
        relevant=tuple(_parse_ref(ref, f"{where}: relevant[{i}]") for i, ref in enumerate(refs)),
        answer_anchor=anchor,
    )


def _parse_ref(ref: object, where: str) -> RelevantRef:
    if not isinstance(ref, dict):
        raise EvalSetError(f"{where}: expected an object with source and contains or anchor")
    source, contains, anchor = ref.get("source"), ref.get("contains"), ref.get("anchor")
    if not isinstance(source, str) or not source or "/" in source:
        raise EvalSetError(
            f"{where}: 'source' must be a document's file name without a folder, e.g. faq.html"
        )
    if contains is None and anchor is None:
        raise EvalSetError(f"{where}: give 'contains' (a text snippet) or 'anchor' (a section anchor)")
    if contains is not None and (not isinstance(contains, str) or not normalise(contains)):
        raise EvalSetError(f"{where}: 'contains' must be a non-empty string")
    if anchor is not None and (not isinstance(anchor, str) or not anchor):
        raise EvalSetError(f"{where}: 'anchor' must be a non-empty string")
    return RelevantRef(
        source=source, contains=None if contains is None else normalise(contains), anchor=anchor
    )


def build_slurm_faq_set(html_dir: Path, out_corpus: Path, out_qa: Path) -> FaqSetSummary:
    """Copy the pages of `html_dir` into `out_corpus` with faq.html's questions removed; write `out_qa`.

    faq.html lists its questions as links to anchors (``<li><a href="#comp">Question</a></li>``) and
    repeats each above its answer (``<p><a id="comp"><b>Question</b></a><br>Answer...</p>`` followed
    by more blocks up to the next question). In the copy the list entries are gone and each question
    is replaced by a heading ``<h3 id="comp">Answer</h3>``, so the chunker sees every answer as its own
    section under "Frequently Asked Questions > For Users > Answer".
    """
    html_dir, out_corpus, out_qa = Path(html_dir), Path(out_corpus), Path(out_qa)
    faq_path = html_dir / FAQ_PAGE
    if not faq_path.is_file():
        raise EvalSetError(
            f"{faq_path}: not found; install Debian's slurm-wlm-doc or pass the folder that holds faq.html"
        )
    if out_corpus.resolve() == html_dir.resolve():
        raise EvalSetError(f"{out_corpus}: is the source folder; write the corpus copy to another folder")
    stripped_html, faqs = _strip_questions(faq_path.read_text(encoding="utf-8", errors="replace"))
    if not faqs:
        raise EvalSetError(f"{faq_path}: no questions in the expected <p><a id=...><b>question</b> form")

    items, short, indistinct = _qa_items(faqs)
    pages = sorted(html_dir.glob("*.html"))
    for page in pages:
        if page.name == FAQ_PAGE:
            write_atomic(out_corpus / page.name, stripped_html)
        else:
            with atomic_output(out_corpus / page.name) as handle:
                handle.write(page.read_bytes())
    write_atomic(out_qa, "".join(json.dumps(item.to_dict(), ensure_ascii=False) + "\n" for item in items))
    return FaqSetSummary(
        pages_copied=len(pages),
        questions_found=len(faqs),
        items_written=len(items),
        skipped_short=short,
        skipped_indistinct=indistinct,
        corpus_dir=out_corpus,
        qa_path=out_qa,
    )


@dataclass(frozen=True)
class _Faq:
    anchor: str
    question: str
    answer: str  # whitespace-collapsed, case kept
    opening: str  # the answer's first block long enough to identify it, likewise


def _strip_questions(html: str) -> tuple[str, list[_Faq]]:
    """faq.html without its question texts, and each question with its answer text."""
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(html)
    questions = [a for a in tree.css("p > a[id]") if _is_question(a)]
    anchors = {a.attributes["id"] or "" for a in questions}
    _drop_question_list(tree, anchors)

    questions_by_anchor = {}
    for a in questions:
        anchor = a.attributes["id"] or ""
        question = " ".join(a.text(deep=True).split())
        paragraph = a.parent
        after = a.next
        while after is not None and after.tag == "-text" and not (after.text_content or "").strip():
            after = after.next
        if after is not None and after.tag == "br":
            after.decompose()
        a.decompose()
        heading = LexborHTMLParser(f"<h3>{NEUTRAL_HEADING}</h3>").css_first("h3")
        heading.attrs["id"] = anchor
        paragraph.insert_before(heading)
        questions_by_anchor[anchor] = question

    faqs = []
    for heading in tree.css("h3[id]"):
        anchor = heading.attributes["id"] or ""
        if anchor in questions_by_anchor:
            faqs.append(_Faq(anchor, questions_by_anchor[anchor], *_section_text(heading)))
    return tree.html or "", faqs


def _is_question(a: Any) -> bool:
    """`<a id>` holding bold text as the first thing in its paragraph: how faq.html marks a question."""
    if a.css_first("b") is None:
        return False
    before = a.prev
    while before is not None:
        if before.tag != "-text" or (before.text_content or "").strip():
            return False
        before = before.prev
    return True


def _drop_question_list(tree: Any, anchors: set[str]) -> None:
    """Remove the list entries that only link to a question, then lists and headings left empty."""
    emptied = []
    for link in tree.css('li > a[href^="#"]'):
        item = link.parent
        target = (link.attributes.get("href") or "")[1:]
        # Links inside answers (e.g. "see <a href="#pam">PAM in Slurm</a>") share their item with other text.
        if target in anchors and normalise(item.text(deep=True)) == normalise(link.text(deep=True)):
            emptied.append(item.parent)
            item.decompose()
    for listing in {node.mem_id: node for node in emptied}.values():
        if listing.css_first("li") is None:
            heading = _previous_element(listing)
            listing.decompose()
            if heading is not None and heading.tag in _HEADINGS:
                following = _next_element(heading)
                if following is None or following.tag in _HEADINGS:
                    heading.decompose()


def _previous_element(node: Any) -> Any:
    node = node.prev
    while node is not None and node.tag == "-text":
        node = node.prev
    return node


def _next_element(node: Any) -> Any:
    node = node.next
    while node is not None and node.tag == "-text":
        node = node.next
    return node


def _section_text(heading: Any) -> tuple[str, str]:
    """The text after `heading` up to the next heading, and its opening: its first block of 40+ chars.

    The snippet comes from one block (paragraph, list item, code block) because only inside a block do
    all extractors yield the same words: between blocks they may add list markers or code fences.
    """
    blocks: list[str] = []
    node = heading.next
    while node is not None and node.tag not in _HEADINGS:
        _collect_blocks(node, blocks)
        node = node.next
    opening = next((block for block in blocks if len(block) >= MIN_ANSWER_CHARS), "")
    return " ".join(" ".join(blocks).split()), opening


def _collect_blocks(node: Any, blocks: list[str]) -> None:
    """Append the whitespace-collapsed text of `node`'s innermost blocks (containers are descended)."""
    if node.tag in _CONTAINERS:
        child = node.child
        while child is not None:
            _collect_blocks(child, blocks)
            child = child.next
        return
    text = node.text_content if node.tag == "-text" else node.text(deep=True)
    if text and text.strip():
        blocks.append(" ".join(text.split()))


def _qa_items(faqs: list[_Faq]) -> tuple[list[QaItem], tuple[str, ...], tuple[str, ...]]:
    items, short, indistinct = [], [], []
    answers = [normalise(faq.answer) for faq in faqs]
    for index, faq in enumerate(faqs):
        if len(faq.answer) < MIN_ANSWER_CHARS:
            short.append(faq.anchor)
            continue
        snippet = _snippet(normalise(faq.opening))
        if not snippet or any(snippet in other for i, other in enumerate(answers) if i != index):
            indistinct.append(faq.anchor)
            continue
        items.append(
            QaItem(
                id=f"faq-{faq.anchor}",
                question=faq.question,
                relevant=(RelevantRef(source=FAQ_PAGE, contains=snippet),),
                answer_anchor=faq.anchor,
            )
        )
    return items, tuple(short), tuple(indistinct)


def _snippet(text: str) -> str:
    """The opening of `text`: through the first sentence end at or past 60 chars, at most 120 chars."""
    if len(text) <= SNIPPET_MIN_CHARS:
        return text
    end = _SENTENCE_END.search(text, SNIPPET_MIN_CHARS - 1)
    if end is not None and end.end() <= SNIPPET_MAX_CHARS:
        return text[: end.end()]
    if len(text) <= SNIPPET_MAX_CHARS:
        return text
    cut = text.rfind(" ", SNIPPET_MIN_CHARS, SNIPPET_MAX_CHARS + 1)
    return text[:cut] if cut > 0 else text[:SNIPPET_MAX_CHARS]
