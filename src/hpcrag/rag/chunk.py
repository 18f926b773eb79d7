"""Chunk: an extracted document in, chunks sized for the embedder out.

Sizes are the embedder's own word pieces. Every chunk's `embed_text` (title, heading path, then the text)
counts at most `size` tokens, the header included (a header never takes more than a quarter of it). A
chunk holds one section; consecutive small sections may share one, and then say so in
metadata["sections"]. A long section is cut at blank lines first, then line breaks, then sentence ends,
then between word pieces, and consecutive chunks of it share about `overlap` tokens. Same input, same
chunks.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import TYPE_CHECKING

from hpcrag.errors import HpcragError
from hpcrag.rag.types import ChunkText, ExtractedDocument, Section, TokenCounter

if TYPE_CHECKING:
    import tokenizers

_MIN_SIZE = 16
_PART = 4  # the header takes at most size/_PART tokens; a section under size/_PART tokens is small
_BLOCK, _LINE, _SENTENCE, _PIECE = 3, 2, 1, 0  # how good a place to cut in front of a unit is
_BLOCKS = re.compile(r"\S(?:.*?\S)?(?=\n[^\S\n]*\n|\s*\Z)", re.S)
_LINES = re.compile(r"[^\n]*\S[^\n]*")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+(?=\S)")


class ChunkError(HpcragError):
    """Chunk settings that cannot work (a size too small to hold text, an overlap as large as a chunk)."""


def chunk_document(doc: ExtractedDocument, tokens: TokenCounter, size: int, overlap: int) -> list[ChunkText]:
    """The chunks of `doc`, in document order, each `embed_text` at most `size` tokens of `tokens`."""
    if size < _MIN_SIZE:
        raise ChunkError(f"chunk size {size} is too small; use at least {_MIN_SIZE} tokens")
    if not 0 <= overlap < size:
        raise ChunkError(f"chunk overlap {overlap} must be at least 0 and less than the chunk size {size}")
    chunks = _Chunker(doc.title, tokens, size, overlap).run([s for s in doc.sections if s.text.strip()])
    return [replace(chunk, position=position) for position, chunk in enumerate(chunks)]


class _Chunker:
    """The chunks of one document's sections: small neighbours merged, long ones split."""

    def __init__(self, title: str, tokens: TokenCounter, size: int, overlap: int) -> None:
        self.title = title
        self.tokens = tokens
        self.size = size
        self.overlap = overlap
        self._counts: dict[str, int] = {}  # headers and heading lines recur: count each once

    def count(self, text: str) -> int:
        if text not in self._counts:
            self._counts[text] = self.tokens.count(text)
        return self._counts[text]

    def header(self, heading_path: tuple[str, ...]) -> str:
        """Title and heading path, cut after size/4 word pieces when longer."""
        header = f"{self.title}\n{' > '.join(heading_path)}" if heading_path else self.title
        limit = self.size // _PART
        if self.count(header) > limit:
            header = header[: self.tokens.offsets(header)[limit - 1][1]]
        return header

    def run(self, sections: list[Section]) -> list[ChunkText]:
        offsets = [self.tokens.offsets(s.text) for s in sections]
        counts = [len(o) for o in offsets]
        small = [count < self.size // _PART for count in counts]
        chunks: list[ChunkText] = []
        index = 0
        while index < len(sections):
            if not small[index]:
                chunks.extend(_SectionSplitter(self, sections[index], offsets[index]).chunks())
                index += 1
                continue
            end = index + 1
            while (
                end < len(sections)
                and small[end]
                and self.estimate(sections, counts, index, end + 1) <= self.size
            ):
                end += 1
            chunk = self.merged(sections[index:end])
            while chunk.token_count > self.size and end - index > 1:  # the estimate was short: a tokenizer
                end -= 1  # whose counts do not add up over the pieces of a text
                chunk = self.merged(sections[index:end])
            chunks.append(chunk)
            index = end
        return chunks

    def estimate(self, sections: list[Section], counts: list[int], start: int, end: int) -> int:
        """Tokens of sections[start:end] merged, as the sum of the counts of its parts."""
        prefix = _common_prefix([s.heading_path for s in sections[start:end]])
        total = self.count(self.header(prefix))
        for section, count in zip(sections[start:end], counts[start:end], strict=True):
            rest = section.heading_path[len(prefix) :]
            total += count + (self.count(" > ".join(rest)) if rest else 0)
        return total

    def merged(self, group: list[Section]) -> ChunkText:
        """Sections sharing one chunk, each under its heading path below their common one."""
        prefix = _common_prefix([s.heading_path for s in group])
        parts = []
        for section in group:
            rest = section.heading_path[len(prefix) :]
            parts.append(f"{' > '.join(rest)}\n{section.text}" if rest else section.text)
        text = "\n\n".join(parts)
        embed_text = f"{self.header(prefix)}\n\n{text}"
        metadata = {}
        if len(group) > 1:
            metadata = {
                "sections": [list(s.heading_path) for s in group],
                "anchors": [s.anchor for s in group],
            }
        return ChunkText(
            0, text, prefix, group[0].anchor, self.tokens.count(embed_text), embed_text, metadata
        )


def _common_prefix(paths: list[tuple[str, ...]]) -> tuple[str, ...]:
    prefix = paths[0]
    for path in paths[1:]:
        length = 0
        while length < min(len(prefix), len(path)) and prefix[length] == path[length]:
            length += 1
        prefix = prefix[:length]
    return prefix


@dataclass
class _Unit:
    """A span of the section text that is never cut further, and how good a cut in front of it is."""

    start: int
    end: int
    strength: int
    count: int


class _SectionSplitter:
    """Cuts one section into overlapping chunks along its units (blocks, lines, sentences, word pieces)."""

    def __init__(self, chunker: _Chunker, section: Section, offsets: list[tuple[int, int]]) -> None:
        self.section = section
        self.text = section.text
        self.tokens = chunker.tokens
        self.size = chunker.size
        self.overlap = chunker.overlap
        self.header = chunker.header(section.heading_path)
        self.budget = self.size - chunker.count(self.header + "\n\n")
        self.offsets = offsets
        self.starts = [start for start, _ in offsets]
        # Pieces of an endless sentence are at most `overlap` long, so that they can be the overlap.
        self.piece_cap = max(1, min(self.budget, self.overlap or self.budget))
        self.units = self._units()

    def _count(self, start: int, end: int) -> int:
        return bisect_left(self.starts, end) - bisect_left(self.starts, start)

    def _units(self) -> list[_Unit]:
        units: list[_Unit] = []
        for block in _BLOCKS.finditer(self.text):
            lines = list(_LINES.finditer(self.text, block.start(), block.end()))
            for number, line in enumerate(lines):
                first = len(units)
                start, end = _strip(self.text, line.start(), line.end())
                if len(lines) > 1 and self._count(start, end) <= self.budget:
                    units.append(_Unit(start, end, _LINE, self._count(start, end)))
                else:
                    self._sentences(start, end, units)
                units[first].strength = _BLOCK if number == 0 else _LINE
        return units

    def _sentences(self, start: int, end: int, units: list[_Unit]) -> None:
        cuts = [start, *(m.end() for m in _SENTENCE_END.finditer(self.text, start, end)), end]
        for left, right in pairwise(cuts):
            left, right = _strip(self.text, left, right)
            count = self._count(left, right)
            if count <= self.budget:
                units.append(_Unit(left, right, _SENTENCE, count))
            else:
                self._pieces(left, right, units)

    def _pieces(self, start: int, end: int, units: list[_Unit]) -> None:
        """Cut between word pieces, at the start of a word where one is near enough."""
        first, last = bisect_left(self.starts, start), bisect_left(self.starts, end)
        at = first
        while at < last:
            cut = min(at + self.piece_cap, last)
            if cut < last:
                word_starts = [k for k in range(at + 1, cut + 1) if self._word_start(k)]
                cut = word_starts[-1] if word_starts else cut
            left = start if at == first else self.offsets[at][0]
            right = end if cut == last else self.offsets[cut - 1][1]
            units.append(_Unit(left, right, _PIECE, cut - at))
            at = cut

    def _word_start(self, k: int) -> bool:
        return self.offsets[k][0] > self.offsets[k - 1][1]

    def chunks(self) -> list[ChunkText]:
        units, out = self.units, []
        start = fresh = 0  # first unit of the chunk; first unit in no chunk yet
        while fresh < len(units):
            end = fresh
            total = sum(u.count for u in units[start:fresh])
            while end < len(units) and total + units[end].count <= self.budget:
                total += units[end].count
                end += 1
            end = max(end, fresh + 1)
            if end < len(units):
                end = self._best_cut(start, fresh, end)
            start, end, count = self._fit(start, fresh, end)
            out.append(self._chunk(start, end, count))
            fresh = end
            start = self._overlap_start(start, fresh)
        return out

    def _best_cut(self, start: int, fresh: int, end: int) -> int:
        """The strongest cut between half the budget and `end` (the latest among equals)."""
        best, total = end, sum(u.count for u in self.units[start:end])
        for k in range(end - 1, fresh, -1):
            total -= self.units[k].count
            if total < self.budget // 2:
                break
            if self.units[k].strength > self.units[best].strength:
                best = k
        return best

    def _overlap_start(self, start: int, fresh: int) -> int:
        """Where the next chunk begins: the last units of this one, up to `overlap` tokens."""
        if fresh >= len(self.units):
            return fresh
        room = min(self.overlap, self.budget - self.units[fresh].count)
        begin, total = fresh, 0
        while begin - 1 > start and total + self.units[begin - 1].count <= room:
            begin -= 1
            total += self.units[begin].count
        return begin

    def _fit(self, start: int, fresh: int, end: int) -> tuple[int, int, int]:
        """Shrink the chunk until the tokenizer itself agrees it fits (counts can be non-additive)."""
        while (count := self.tokens.count(self._embed_text(start, end))) > self.size:
            if end - 1 > fresh:
                end -= 1
            elif start < fresh:
                start = fresh
            else:
                self._halve(fresh)
                end = fresh + 1
        return start, end, count

    def _halve(self, index: int) -> None:
        """Cut a unit that does not fit on its own in two, between word pieces."""
        unit = self.units[index]
        first, last = bisect_left(self.starts, unit.start), bisect_left(self.starts, unit.end)
        if last - first < 2:
            raise ChunkError(f"a single word piece does not fit in a {self.size}-token chunk; raise the size")
        middle = (first + last) // 2
        cut = self.offsets[middle][0]
        self.units[index : index + 1] = [
            _Unit(unit.start, cut, unit.strength, middle - first),
            _Unit(cut, unit.end, _PIECE, last - middle),
        ]

    def _embed_text(self, start: int, end: int) -> str:
        return f"{self.header}\n\n{self._text(start, end)}"

    def _text(self, start: int, end: int) -> str:
        return self.text[self.units[start].start : self.units[end - 1].end]

    def _chunk(self, start: int, end: int, count: int) -> ChunkText:
        return ChunkText(
            position=0,
            text=self._text(start, end),
            heading_path=self.section.heading_path,
            anchor=self.section.anchor,
            token_count=count,
            embed_text=self._embed_text(start, end),
        )


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


class HuggingFaceTokens:
    """A TokenCounter over a Hugging Face fast tokenizer: no special tokens, no truncation, no padding."""

    def __init__(self, tokenizer: tokenizers.Tokenizer) -> None:
        from tokenizers import Tokenizer

        # A copy: a model's tokenizer.json may truncate and pad (MiniLM's: to 128), which counting must not.
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).offsets)
