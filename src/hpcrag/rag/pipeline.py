"""The query pipeline: question in, grounded answer with checked citations and timed stages out.

    prepare(): normalise -> PII check -> (expansion / HyDE) -> hybrid retrieval -> rerank -> MMR
               -> fenced sources within the tier's context budget -> chat messages
    finish():  citations checked against the sources given -> support per sentence -> PII on the answer

Generation sits between the two and is not ours: the CLI passes an HTTP client of a running gateway
(`generate.py`), and the gateway, serving `model: "rag:..."`, runs its own router and forwarder, so
a RAG answer is routed, budgeted and accounted like any other request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from hpcrag.config.rag_schema import CollectionSettings
from hpcrag.errors import HpcragError
from hpcrag.rag.fusion import Candidate
from hpcrag.rag.generate import Generator
from hpcrag.rag.retrieve import LoadedCollection, Retriever, normalise_question
from hpcrag.rag.types import Embedder

if TYPE_CHECKING:
    from hpcrag.rag.rerank import Reranker

log = logging.getLogger(__name__)


@dataclass
class Source:
    """One numbered source as given to the model and shown to the reader."""

    number: int
    chunk_id: int
    document: str
    title: str
    section: list[str]
    anchor: str | None
    text: str
    scores: dict[str, float]
    injection: list[str]

    def public(self, with_text: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not with_text:
            data.pop("text")
        return data


@dataclass
class Prepared:
    question: str
    tier: str
    messages: list[dict[str, str]]
    sources: list[Source]
    max_answer_tokens: int
    prompt_tokens: int
    pii_masked: int = 0
    injection_flagged: int = 0
    injection_dropped: int = 0
    question_injection: int = 0  # instruction-like phrases in the question itself (counted, not refused)
    sources_dropped: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class RagAnswer:
    answer: str
    sources: list[Source]
    cited: list[int]
    removed_citations: list[str]
    unsupported: list[str]
    support: list[dict[str, Any]]
    tier: str
    seconds: dict[str, float]
    model: str | None = None
    usage: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "sources": [s.public() for s in self.sources],
            "citations": {"cited": self.cited, "removed": self.removed_citations},
            "unsupported_sentences": self.unsupported,
            "support": self.support,
            "tier": self.tier,
            "model": self.model,
            "usage": self.usage,
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
        }


class RagPipeline:
    """One collection's pipeline; thread-safe for concurrent `prepare`/`finish` calls."""

    def __init__(
        self,
        loaded: LoadedCollection,
        embedder: Embedder,
        settings: CollectionSettings,
        reranker: Reranker | None = None,
        helper: Generator | None = None,
    ) -> None:
        self.loaded = loaded
        self.embedder = embedder
        self.settings = settings
        self.retriever = Retriever(loaded, embedder, settings)
        self.reranker = reranker
        self.helper = helper  # writes expansions and hypothetical answers when those are on
        self._warned = False

    @property
    def name(self) -> str:
        return self.loaded.name

    def check_question(self, question: str) -> tuple[str, int]:
        """The question normalised and under the PII policy (refused, masked or as is); masked count."""
        text = normalise_question(question, self.settings.query.max_question_chars)
        if self.settings.pii == "off":
            return text, 0
        from hpcrag.rag.pii import PiiGuard

        masked = PiiGuard().apply(text, self.settings.pii, "question")
        return masked, int(masked != text)

    def retrieve(
        self,
        question: str,
        filters: dict[str, list[str]] | None = None,
        fusion: str | None = None,
        k: int = 10,
    ) -> tuple[list[Candidate], dict[str, float]]:
        """Ranked candidates after fusion, rerank and MMR: what `--retrieve-only` and eval use."""
        text, _ = self.check_question(question)
        return self._rank(text, filters, fusion, k)

    def _rank(
        self, question: str, filters: dict[str, list[str]] | None, fusion: str | None, k: int
    ) -> tuple[list[Candidate], dict[str, float]]:
        from hpcrag.rag.mmr import mmr

        seconds: dict[str, float] = {}
        hyde, expansion = self._query_helpers()
        query_vector = self._hyde_vector(question, seconds) if hyde else None
        search_text = self._expanded(question, seconds) if expansion else question
        want = max(k, self.settings.retrieval.candidates)
        retrieval = self.retriever.retrieve(search_text, filters, fusion, want, query_vector)
        seconds.update(retrieval.seconds)
        candidates = retrieval.candidates
        if self.reranker is not None and candidates:
            t0 = time.perf_counter()
            head = candidates[: self.settings.rerank.candidates]
            texts = {
                c.row: chunk.text
                for c, chunk in zip(head, self.loaded.store.chunks([c.row for c in head]), strict=True)
            }
            # Only the reranked head goes on: its scores and the tail's fused ones are not comparable.
            candidates = self.reranker.rerank(question, head, texts)
            seconds["rerank"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        retrieval_settings = self.settings.retrieval
        picked = mmr(
            candidates,
            self.loaded.vectors,
            k,
            lambda_=retrieval_settings.mmr_lambda,
            max_per_document=retrieval_settings.max_chunks_per_document,
            document_of=self.loaded.store.document_of_rows(),
        )
        seconds["mmr"] = time.perf_counter() - t0
        return picked, seconds

    def _query_helpers(self) -> tuple[bool, bool]:
        """(HyDE, expansion) as configured, both off (with one warning) when no generator was given."""
        wanted = (self.settings.query.hyde, self.settings.query.expansion)
        if any(wanted) and self.helper is None:
            if not self._warned:
                log.warning(
                    "collection %s: query.hyde/query.expansion need a generator and this pipeline has "
                    "none (the gateway's rag: models and `rag eval` give none): skipped",
                    self.name,
                )
                self._warned = True
            return False, False
        return wanted

    def _expanded(self, question: str, seconds: dict[str, float]) -> str:
        """The question plus a few alternative phrasings written by the helper model (BM25 recall)."""
        t0 = time.perf_counter()
        reply = self._ask(
            "Write three short alternative phrasings of this search question, one per line, nothing else.",
            question,
        )
        seconds["expansion"] = time.perf_counter() - t0
        return " ".join([question, *reply.splitlines()[:3]])

    def _hyde_vector(self, question: str, seconds: dict[str, float]) -> Any:
        """HyDE: embed a hypothetical answer passage, averaged with the question's own embedding."""
        t0 = time.perf_counter()
        passage = self._ask("Write a short passage from technical documentation that answers:", question)
        vectors = (
            self.embedder.embed([question, passage]) if passage.strip() else self.embedder.embed([question])
        )
        vector = vectors.mean(axis=0)
        seconds["hyde"] = time.perf_counter() - t0
        return vector / max(float((vector**2).sum()) ** 0.5, 1e-12)

    def _ask(self, instruction: str, question: str) -> str:
        assert self.helper is not None  # _query_helpers turns both off without one
        messages = [{"role": "user", "content": f"{instruction}\n\n{question}"}]
        return self.helper.complete(messages, model=f"tier-{self.settings.tier}", max_tokens=128).text

    def prepare(
        self,
        question: str,
        tier: str | None = None,
        filters: dict[str, list[str]] | None = None,
        top_k: int | None = None,
        fusion: str | None = None,
    ) -> Prepared:
        """Everything before generation: the chat messages and the sources they number (the tier's
        top_k of them unless `top_k` says otherwise)."""
        from hpcrag.rag import injection
        from hpcrag.rag.prompt import PromptSource, build_prompt

        started = time.perf_counter()
        settings = self.settings.at_tier(tier) if tier else self.settings
        text, masked = self.check_question(question)
        seconds: dict[str, float] = {"question": time.perf_counter() - started}
        question_flags = len(injection.detect(text)) if settings.injection != "off" else 0
        candidates, ranked_seconds = self._rank(text, filters, fusion, top_k or settings.row.top_k)
        seconds.update(ranked_seconds)
        t0 = time.perf_counter()
        sources, flagged, dropped = self._sources(candidates, settings)
        prompt = build_prompt(
            text,
            [PromptSource(s.number, s.title, tuple(s.section), s.anchor, s.text) for s in sources],
            budget_tokens=settings.row.context_tokens,
            max_answer_tokens=settings.row.max_answer_tokens,
        )
        used = {p.number for p in prompt.sources_used}
        sources = [s for s in sources if s.number in used]
        seconds["prompt"] = time.perf_counter() - t0
        return Prepared(
            question=text,
            tier=settings.tier,
            messages=prompt.messages,
            sources=sources,
            max_answer_tokens=settings.row.max_answer_tokens,
            prompt_tokens=prompt.tokens,
            pii_masked=masked,
            injection_flagged=flagged,
            injection_dropped=dropped,
            question_injection=question_flags,
            sources_dropped=prompt.dropped,
            seconds=seconds,
        )

    def _sources(
        self, candidates: list[Candidate], settings: CollectionSettings
    ) -> tuple[list[Source], int, int]:
        """Numbered sources; chunks flagged at ingest or now are fenced as usual, or left out (`drop`)."""
        from hpcrag.rag import injection

        chunks = self.loaded.store.chunks([c.row for c in candidates])
        documents = self.loaded.store.documents_by_id(c.doc_id for c in chunks)
        sources: list[Source] = []
        flagged = dropped = 0
        for candidate, chunk in zip(candidates, chunks, strict=True):
            kinds = set(chunk.injection)
            if settings.injection != "off":
                kinds |= {finding.kind for finding in injection.detect(chunk.text)}
            if kinds:
                flagged += 1
                if settings.injection == "drop":
                    dropped += 1
                    continue
            document = documents[chunk.doc_id]
            sources.append(
                Source(
                    number=len(sources) + 1,
                    chunk_id=chunk.chunk_id,
                    document=document.source,
                    title=document.title,
                    section=list(chunk.heading_path),
                    anchor=chunk.anchor,
                    text=chunk.text,
                    scores={k: round(float(v), 6) for k, v in candidate.scores.items()},
                    injection=sorted(kinds),
                )
            )
        return sources, flagged, dropped

    def finish(self, prepared: Prepared, answer: str, seconds: dict[str, float] | None = None) -> RagAnswer:
        """Citations checked against the sources given, support scored, PII policy on the answer."""
        from hpcrag.rag.citations import check_citations, support_scores

        t0 = time.perf_counter()
        report = check_citations(answer, len(prepared.sources))
        text = report.text
        if self.settings.pii != "off":
            from hpcrag.rag.pii import PiiGuard

            text, _ = PiiGuard().mask(text)
        try:
            support = support_scores(
                text,
                {s.number: s.text for s in prepared.sources},
                embed=self.embedder.embed if self.settings.grounding.method == "embedding" else None,
                threshold=self.settings.grounding.support_threshold,
            )
        except HpcragError as exc:  # a remote embedder gone: the answer stands, its support is unknown
            log.warning("collection %s: support of an answer not scored: %s", self.name, exc)
            support = []
        timings = {**prepared.seconds, **(seconds or {}), "postprocess": time.perf_counter() - t0}
        return RagAnswer(
            answer=text,
            sources=prepared.sources,
            cited=list(report.cited),
            removed_citations=list(report.removed),
            unsupported=[s.sentence for s in support if not s.supported],
            support=[
                {
                    "sentence": s.sentence,
                    "cited": list(s.cited),
                    "score": round(s.score, 3),
                    "supported": s.supported,
                }
                for s in support
            ],
            tier=prepared.tier,
            seconds=timings,
        )

    def answer(
        self,
        question: str,
        generator: Generator,
        tier: str | None = None,
        filters: dict[str, list[str]] | None = None,
        model: str | None = None,
        on_delta: Any | None = None,
        top_k: int | None = None,
        fusion: str | None = None,
    ) -> RagAnswer:
        """The whole pipeline with `generator` (streaming deltas to `on_delta` when given)."""
        prepared = self.prepare(question, tier, filters, top_k, fusion)
        if not prepared.sources:
            if on_delta is not None:
                on_delta(NO_SOURCES)
            return self.finish(prepared, NO_SOURCES)
        t0 = time.perf_counter()
        chosen = model or f"tier-{prepared.tier}"
        if on_delta is None:
            reply = generator.complete(prepared.messages, model=chosen, max_tokens=prepared.max_answer_tokens)
            text = reply.text
        else:
            shown = AnswerStream(len(prepared.sources), mask=self.settings.pii != "off")
            deltas: Iterator[str]
            reply, deltas = generator.stream(
                prepared.messages, model=chosen, max_tokens=prepared.max_answer_tokens
            )
            parts = []
            for delta in deltas:
                parts.append(delta)
                if ready := shown.feed(delta):
                    on_delta(ready)
            if rest := shown.finish():
                on_delta(rest)
            text = "".join(parts)
        result = self.finish(prepared, text, {"generate": time.perf_counter() - t0})
        result.model, result.usage = reply.model, reply.usage
        return result


class AnswerStream:
    """A streamed answer made fit to show, piece by piece: citations of sources that were not given
    removed, and personal data masked (`mask`), so the reader sees what `finish` would return."""

    def __init__(self, n_sources: int, mask: bool) -> None:
        from hpcrag.rag.citations import StreamingCitationFilter
        from hpcrag.rag.pii import StreamingMask

        self._citations = StreamingCitationFilter(n_sources)
        self._mask = StreamingMask() if mask else None

    def feed(self, delta: str) -> str:
        shown = self._citations.feed(delta)
        return self._mask.feed(shown) if self._mask is not None else shown

    def finish(self) -> str:
        rest = self._citations.finish()
        return rest if self._mask is None else self._mask.feed(rest) + self._mask.finish()


NO_SOURCES = (
    "No document in this collection matches the question (and its filters), so there is no answer to ground."
)
