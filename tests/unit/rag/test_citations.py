"""Citation checking (batch and streaming, which must agree for any split) and per-sentence support."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcrag.rag.citations import (
    EMBEDDING_SUPPORT_THRESHOLD,
    LEXICAL_SUPPORT_THRESHOLD,
    MAX_MARKER_CHARS,
    StreamingCitationFilter,
    check_citations,
    split_sentences,
    support_scores,
)


@pytest.mark.parametrize(
    ("answer", "text", "cited", "removed"),
    [
        ("Use sbatch [1]. It queues [2, 3].", "Use sbatch [1]. It queues [2, 3].", [1, 2, 3], []),
        ("A [1][2] and [1-3].", "A [1][2] and [1, 2, 3].", [1, 2, 3], []),
        ("A [Source 2], b [source 1; Sources 3].", "A [2], b [1, 3].", [1, 2, 3], []),
        ("Valid [2, 7] only.", "Valid [2] only.", [2], ["[2, 7]"]),
        ("Range [2-5] clipped.", "Range [2, 3] clipped.", [2, 3], ["[2-5]"]),
        ("Gone [7] here.", "Gone here.", [], ["[7]"]),
        ("End of claim [0].", "End of claim.", [], ["[0]"]),
        ("Twice [4] [5] over.", "Twice over.", [], ["[4]", "[5]"]),
        ("Joined[1][9] next", "Joined[1] next", [1], ["[9]"]),
        ("[8] Starts a line.\n  [9] indented", "Starts a line.\n  indented", [], ["[8]", "[9]"]),
        ("(see [6])", "(see)", [], ["[6]"]),
    ],
)
def test_check_citations(answer, text, cited, removed):
    report = check_citations(answer, 3)
    assert (report.text, report.cited, report.removed) == (text, cited, removed)


def test_code_and_plain_brackets_are_left_alone():
    answer = "Read `argv[1]` and\n```\nx = a[7]\n```\nthen [4] and [a] and [1 2] and [[1]]."
    report = check_citations(answer, 1)
    assert report.text == "Read `argv[1]` and\n```\nx = a[7]\n```\nthen and [a] and [1 2] and [[1]]."
    assert report.cited == [1] and report.removed == ["[4]"]


def test_an_unclosed_backtick_stops_at_the_line_end():
    assert check_citations("a `b [5]\nc [5] d", 2).text == "a `b [5]\nc d"


def test_markers_longer_than_the_limit_are_plain_text():
    long = "[" + ", ".join(["1"] * 20) + "]"
    assert len(long) > MAX_MARKER_CHARS
    assert check_citations(f"x {long}", 0).text == f"x {long}"


def test_streaming_holds_back_only_a_possible_marker():
    citations = StreamingCitationFilter(2)
    assert citations.feed("Jobs run") == "Jobs run"
    assert citations.feed(" in order [") == " in order"
    assert citations.feed("Source 1") == ""
    assert citations.feed("] and [3") == " [1] and"
    assert citations.feed("] fast.") == " fast."
    assert citations.finish() == ""
    assert citations.report.text == "Jobs run in order [1] and fast."
    assert (citations.report.cited, citations.report.removed) == ([1], ["[3]"])


def test_streaming_releases_a_bracket_that_cannot_be_a_marker():
    citations = StreamingCitationFilter(2)
    assert citations.feed("see [the manual") == "see [the manual"
    assert (
        citations.feed(" [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12") == " [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12"
    )
    assert citations.feed("]") == "]"
    pending = StreamingCitationFilter(2)
    assert pending.feed("tail [1") == "tail"
    assert pending.finish() == " [1"  # never closed: plain text


PIECES = ["[1]", "[2, 3]", "[Source 2]", "[9]", "[1-4]", "[source 7]", "[", "]", " ", "  ", "\n", "`", "```",
          "word", "x[1]", ".", ",", "-", "1", "Sources", "[0]", "\t"]  # fmt: skip


@st.composite
def split_text(draw):
    text = draw(
        st.one_of(
            st.lists(st.sampled_from(PIECES), max_size=30).map("".join),
            st.text(alphabet="ab [],-\u2013`\n 0123456789Ss.", max_size=80),
        )
    )
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    return text, [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@settings(max_examples=400, deadline=None)
@given(split_text(), st.integers(0, 4))
def test_any_split_streams_what_check_citations_gives(case, n_sources):
    text, deltas = case
    citations = StreamingCitationFilter(n_sources)
    shown = "".join(citations.feed(delta) for delta in deltas) + citations.finish()
    whole = check_citations(text, n_sources)
    assert shown == whole.text
    assert citations.report == whole


def test_split_sentences_keeps_trailing_markers_and_skips_code():
    answer = "First claim. [1] Second, with 3.5 GB [2].\n- A list item\n```\ncode line\n```\nLast one!"
    assert split_sentences(answer) == [
        "First claim. [1]",
        "Second, with 3.5 GB [2].",
        "- A list item",
        "Last one!",
    ]


SOURCES = {
    1: "sbatch submits a batch script to Slurm. If no file name is specified, sbatch will read in a script "
    "from standard input.",
    2: "The --time option sets a limit on the total run time of the job allocation. If the requested time "
    "limit exceeds the partition's time limit, the job will be left in a PENDING state.",
}
ANSWER = (
    "sbatch reads the batch script from standard input when no file name is given [1]. "
    "A job whose time limit exceeds the partition limit stays pending [2]. "
    "GPUs are requested with the --gres option [1]. "
    "Slurm schedules jobs by priority. "
    "I don't know."
)


def test_lexical_support():
    support = support_scores(ANSWER, SOURCES)
    assert [s.cited for s in support] == [[1], [2], [1], [], []]
    assert [s.supported for s in support] == [True, True, False, False, True]
    # sbatch, read, batch, script, standard, input, file, name, given: all but "given" are in source 1
    assert support[0].score == pytest.approx(8 / 9)
    assert support[2].score == 0.0
    assert support[3].score == 0.0 and support[4].score == 0.0
    assert LEXICAL_SUPPORT_THRESHOLD == 0.5


def test_threshold_and_unknown_sources():
    support = support_scores("It reads standard input [1]. Also [5].", SOURCES, threshold=1.01)
    assert support[0].score == 1.0 and not support[0].supported
    assert support[1].cited == []  # a number with no source given counts as citing nothing
    assert support_scores("Run `srun a[2]` now.", SOURCES)[0].cited == []  # code is no citation


@pytest.fixture(scope="module")
def minilm():
    from hpcrag.rag.embed import LocalEmbedder

    return LocalEmbedder()


def test_embedding_support(minilm):
    support = support_scores(ANSWER, SOURCES, embed=minilm.embed)
    assert [s.supported for s in support] == [True, True, False, False, True]
    assert min(support[0].score, support[1].score) > EMBEDDING_SUPPORT_THRESHOLD > support[2].score
    assert support[3].score == 0.0
