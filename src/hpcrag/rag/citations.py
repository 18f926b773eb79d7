"""Citation markers in a generated answer: checked against the sources given, and each sentence's support.

`check_citations` and `StreamingCitationFilter` promise that a reader never sees a citation of a source
that was not given: markers such as [1], [2, 3], [1][2], [1-3] and [Source 2] are rewritten as "[1]" or
"[1, 2, 3]" with only the valid numbers, and a marker with none left is removed together with the space
before it (or, at the start of a line, the space after it). Text inside Markdown code (`...` or ```
fences) is left alone, since `argv[1]` is code, not a citation. The streaming filter holds back only what
a later delta could still change (a trailing "[..." of at most MAX_MARKER_CHARS, a trailing run of
spaces, a trailing run of backticks), so any split of a text into deltas gives exactly the text and
report of `check_citations` on the whole.

`support_scores` flags sentences that their cited sources do not back: by embedding cosine when an
embedder is given, else by the share of the sentence's content words (stemmed) found in the source.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

MAX_MARKER_CHARS = 32  # longer "[...]" is plain text: "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" still fits
# Share of a sentence's content words found in the cited chunk, on the same chunks: claims it states
# 0.75-1.0, claims on its topic that it does not state up to 0.13.
LEXICAL_SUPPORT_THRESHOLD = 0.5
# Cosine of sentence and cited chunk with all-MiniLM-L6-v2, measured on Slurm man-page chunks: claims the
# chunk states 0.69-0.79, claims on the chunk's topic that it does not state up to 0.46, others <= 0.15.
EMBEDDING_SUPPORT_THRESHOLD = 0.55
TRIVIAL_CONTENT_WORDS = 2  # an uncited sentence with at most this many content words ("I don't know.")

_NUMBER = r"[0-9]{1,6}"
_ITEM = rf"{_NUMBER}(?:[ \t]*[-\u2013][ \t]*{_NUMBER})?"
_MARKER = re.compile(
    rf"\[[ \t]*(?:sources?[ \t]*)?{_ITEM}(?:[ \t]*[,;][ \t]*(?:sources?[ \t]*)?{_ITEM})*[ \t]*\]",
    re.IGNORECASE,
)
_ITEMS = re.compile(rf"({_NUMBER})(?:[ \t]*[-\u2013][ \t]*({_NUMBER}))?")
# Every proper prefix of a marker matches this (a superset: it only decides what is worth holding back).
_MARKER_PREFIX = re.compile(
    r"\[(?:[0-9 \t,;\-\u2013]|sources?)*(?:s(?:o(?:u(?:r(?:ce?)?)?)?)?)?", re.IGNORECASE
)
_SPECIAL = re.compile(r"[\[`\n]")
_SPACES = " \t"


@dataclass(frozen=True)
class CitationReport:
    text: str  # the answer with only valid citations left
    cited: list[int]  # valid source numbers cited, sorted
    removed: list[str]  # markers, as written, that named a source not given


def check_citations(answer: str, n_sources: int) -> CitationReport:
    """`answer` with every citation of a source outside 1..n_sources removed, and what was cited."""
    citations = StreamingCitationFilter(n_sources)
    citations.feed(answer)
    citations.finish()
    return citations.report


class StreamingCitationFilter:
    """`check_citations` over a stream: feed() each delta and emit what it returns, then finish()."""

    def __init__(self, n_sources: int) -> None:
        self.n_sources = n_sources
        self._pending = ""  # raw text not decided yet
        self._out: list[str] = []
        self._cited: set[int] = set()
        self._removed: list[str] = []
        self._line_blank = True  # nothing but spaces emitted since the last newline
        self._strip_spaces = False  # a removed marker opened the line: drop the spaces after it
        self._fence = False  # inside a ``` block
        self._inline_ticks = 0  # inside an inline code span opened by this many backticks

    @property
    def report(self) -> CitationReport:
        return CitationReport("".join(self._out), sorted(self._cited), list(self._removed))

    def feed(self, delta: str) -> str:
        return self._run(self._pending + delta, final=False)

    def finish(self) -> str:
        return self._run(self._pending, final=True)

    def _run(self, text: str, final: bool) -> str:
        start = len(self._out)
        self._pending = ""
        i = 0
        while True:
            match = _SPECIAL.search(text, i)
            if match is None:
                body, spaces = _split_spaces(text[i:])
                self._emit(body)
                if final or self._line_blank:
                    self._emit(spaces)
                else:  # a marker may follow and take these spaces with it
                    self._pending = spaces
                break
            j = match.start()
            if text[j] == "\n":
                self._emit(text[i : j + 1])
                self._inline_ticks = 0  # an unclosed ` must not hide the rest of the answer's markers
                i = j + 1
            elif text[j] == "`":
                end = j
                while end < len(text) and text[end] == "`":
                    end += 1
                if end == len(text) and not final:  # the run of backticks may go on
                    self._emit(text[i:j])
                    self._pending = text[j:]
                    break
                self._emit(text[i:end])
                self._backticks(end - j)
                i = end
            elif self._fence or self._inline_ticks:
                self._emit(text[i : j + 1])
                i = j + 1
            else:
                body, spaces = _split_spaces(text[i:j])
                self._emit(body)
                close = text.find("]", j, j + MAX_MARKER_CHARS)
                marker = _MARKER.fullmatch(text, j, close + 1) if close >= 0 else None
                if marker is not None:
                    self._marker(marker.group(), spaces)
                    i = close + 1
                elif close < 0 and not final and _could_be_marker(text, j):
                    self._pending = spaces + text[j:]
                    break
                else:
                    self._emit(spaces + "[")
                    i = j + 1
        return "".join(self._out[start:])

    def _marker(self, marker: str, spaces: str) -> None:
        numbers: list[int] = []
        invalid = False
        for first, last in _ITEMS.findall(marker):
            low, high = sorted((int(first), int(last or first)))
            invalid |= low < 1 or high > self.n_sources
            numbers.extend(n for n in range(max(low, 1), min(high, self.n_sources) + 1) if n not in numbers)
        if invalid:
            self._removed.append(marker)
        if numbers:
            self._cited.update(numbers)
            self._emit(spaces)
            self._emit("[" + ", ".join(map(str, numbers)) + "]")
        elif self._line_blank:
            self._emit(spaces)
            self._strip_spaces = True

    def _backticks(self, count: int) -> None:
        if self._fence:
            self._fence = count < 3
        elif self._inline_ticks:
            if count == self._inline_ticks:
                self._inline_ticks = 0
        elif count >= 3:
            self._fence = True
        else:
            self._inline_ticks = count

    def _emit(self, text: str) -> None:
        if self._strip_spaces:
            text = text.lstrip(_SPACES)
            self._strip_spaces = not text
        if not text:
            return
        self._out.append(text)
        line = text.rpartition("\n")
        blank = not line[2].strip(_SPACES)
        self._line_blank = blank if line[1] else self._line_blank and blank


def _split_spaces(text: str) -> tuple[str, str]:
    body = text.rstrip(_SPACES)
    return body, text[len(body) :]


def _could_be_marker(text: str, start: int) -> bool:
    return len(text) - start < MAX_MARKER_CHARS and _MARKER_PREFIX.fullmatch(text, start) is not None


def cited_numbers(text: str) -> list[int]:
    """Source numbers the markers in `text` name, in order of first mention (ranges expanded)."""
    numbers: list[int] = []
    for marker in _MARKER.findall(text):
        for first, last in _ITEMS.findall(marker):
            low, high = sorted((int(first), int(last or first)))
            numbers.extend(n for n in range(low, high + 1) if n not in numbers)
    return numbers


@dataclass(frozen=True)
class SentenceSupport:
    sentence: str
    cited: list[int]  # the given sources it cites
    score: float  # best support among its cited sources, 0 when it cites none
    supported: bool


# A sentence ends at . ! or ? (with any closing quotes or brackets and the markers that follow it) before
# a space, or at a line break.
_SENTENCE_END = re.compile(rf"[.!?]+[\"')\]]*(?:[ \t]*\[[^\[\]\n]{{1,{MAX_MARKER_CHARS}}}\])*(?=\s|$)|\n+")
_CODE_BLOCK = re.compile(r"^[ \t]*```.*?(?:^[ \t]*```[^\n]*$|\Z)", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_WORD = re.compile(r"\w+(?:'\w+)?")


def split_sentences(text: str) -> list[str]:
    """The answer's sentences, each with the citation markers that close it; fenced code is skipped."""
    sentences = []
    for block in _CODE_BLOCK.split(text):
        start = 0
        for end in _SENTENCE_END.finditer(block):
            sentences.append(block[start : end.end()].strip())
            start = end.end()
        sentences.append(block[start:].strip())
    return [sentence for sentence in sentences if _WORD.search(_MARKER.sub("", sentence))]


def support_scores(
    answer_text: str,
    sources: dict[int, str],
    embed: Callable[[list[str]], np.ndarray] | None = None,
    threshold: float | None = None,
) -> list[SentenceSupport]:
    """How well each sentence of the answer is backed by the sources (number -> text) it cites.

    The threshold defaults to EMBEDDING_SUPPORT_THRESHOLD with `embed`, else LEXICAL_SUPPORT_THRESHOLD.
    """
    if threshold is None:
        threshold = EMBEDDING_SUPPORT_THRESHOLD if embed is not None else LEXICAL_SUPPORT_THRESHOLD
    sentences = split_sentences(answer_text)
    claims = [_MARKER.sub("", sentence).strip() for sentence in sentences]
    cited = [[n for n in cited_numbers(_INLINE_CODE.sub("", s)) if n in sources] for s in sentences]
    if embed is not None:
        best = _cosine_scores(claims, cited, sources, embed)
    else:
        best = _lexical_scores(claims, cited, sources)
    results = []
    for sentence, claim, numbers, score in zip(sentences, claims, cited, best, strict=True):
        supported = score >= threshold if numbers else len(_content_words(claim)) <= TRIVIAL_CONTENT_WORDS
        results.append(SentenceSupport(sentence, numbers, score, supported))
    return results


def _lexical_scores(claims: list[str], cited: list[list[int]], sources: dict[int, str]) -> list[float]:
    words = {n: set(_content_words(sources[n])) for n in {n for numbers in cited for n in numbers}}
    best = []
    for claim, numbers in zip(claims, cited, strict=True):
        mine = set(_content_words(claim))
        best.append(max((len(mine & words[n]) / len(mine) for n in numbers), default=0.0) if mine else 0.0)
    return best


def _cosine_scores(
    claims: list[str],
    cited: list[list[int]],
    sources: dict[int, str],
    embed: Callable[[list[str]], np.ndarray],
) -> list[float]:
    needed = sorted({n for numbers in cited for n in numbers})
    asked = [i for i, numbers in enumerate(cited) if numbers]
    if not asked:
        return [0.0] * len(claims)
    vectors = np.asarray(embed([claims[i] for i in asked] + [sources[n] for n in needed]), dtype=np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    source_row = {n: len(asked) + i for i, n in enumerate(needed)}
    best = [0.0] * len(claims)
    for row, i in enumerate(asked):
        best[i] = max(float(vectors[row] @ vectors[source_row[n]]) for n in cited[i])
    return best


_local = threading.local()


def _content_words(text: str) -> list[str]:
    """Stemmed words of `text` that are not stopwords."""
    words = [word for word in _WORD.findall(text.lower()) if word not in _stopwords()]
    return _stemmer().stemWords(words)


@cache
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return frozenset(STOPWORDS_EN_PLUS)


def _stemmer() -> Any:
    """This thread's stemmer: a PyStemmer instance must not be used by two threads at once."""
    if not hasattr(_local, "stemmer"):
        import Stemmer

        _local.stemmer = Stemmer.Stemmer("english")
    return _local.stemmer
