"""RAG at the gateway: `model: "rag:COLLECTION"` (or `rag:COLLECTION:tier-m`, `rag:COLLECTION:auto`) on
/v1/chat/completions, and POST /v1/rag/query.

The gateway hands the pipeline (`hpcrag.rag.pipeline`) its own router and forwarder: the question is
prepared here (PII policy, retrieval, fenced sources; off the event loop), the chat request is rewritten
to carry the prepared messages to `tier-<tier>` (or `auto`), and app.py routes, forwards, budgets and
accounts it like any other request. What this module promises:

- The question is the last user message; earlier turns are not sent, since the answer is grounded in
  the sources, not in the conversation.
- The backend sees the question only as the collection's PII policy lets it through (masked, or the
  request refused with 400 `pii_refused` naming the entity types), and the ledger row holds no question
  at all: only the collection, stage timings, source chunk ids and counts (`Grounded.record`).
- A reader never sees a citation of a source that was not given: a plain answer is checked whole
  (`RagPipeline.finish`), a stream delta by delta (`CitedStream`). The answer's extra top-level fields
  (`hpcrag_sources`, `hpcrag_citations`) come on the plain answer, and on one last stream event before
  `data: [DONE]`. Personal data in the answer is masked in both (a stream holds its text back until a
  sentence ends, so that a number split over two deltas is masked whole).
- One pipeline per collection generation, opened once in a thread and reopened when an ingest
  publishes a new generation (looked at no more often than every GENERATION_CHECK_S).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, TypeAdapter, ValidationError

from hpcrag.config.rag_schema import CollectionName, RagSettings
from hpcrag.errors import HpcragError, QuestionError
from hpcrag.gateway.proxy import Exchange, compact_event, error_body, event_object
from hpcrag.gateway.requests import ChatCompletionRequest, InvalidRequest, OpenAIRequest, format_path, quote
from hpcrag.gateway.router import AUTO, TIER_PREFIX
from hpcrag.metrics.gateway import GatewayMetrics
from hpcrag.rag.collection import MANIFEST, Collection, check_name, collections_root
from hpcrag.rag.pii import PiiRefused
from hpcrag.rag.pipeline import NO_SOURCES, AnswerStream, Prepared, RagAnswer, RagPipeline, Source
from hpcrag.rag.retrieve import parse_filters

log = logging.getLogger(__name__)
RAG_PREFIX = "rag:"
FILTERS_FIELD = "hpcrag_filters"  # the chat body's extra field: {"source": "faq.html"} or lists
GENERATION_CHECK_S = 2.0
EXCERPT_CHARS = 240
_FILTERS = TypeAdapter(dict[str, StrictStr | list[StrictStr]])
_FILTERS_FIX = 'send an object of strings or lists of strings, e.g. {"source": "faq.html"}'


class RagRefused(Exception):
    """A RAG request the gateway answers with an error: `status`, OpenAI error `code`, `message`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RagModel:
    """What a `rag:` model name asks for."""

    collection: str
    tier: str | None  # pinned by the name; None: X-Hpcrag-Tier, else the collection's own tier
    auto: bool = False  # `:auto`: the router picks the tier by the prompt's complexity


def parse_model(model: str) -> RagModel | None:
    """The RAG request a model name makes; None when it is not a `rag:` name."""
    if not model.startswith(RAG_PREFIX):
        return None
    collection, _, suffix = model[len(RAG_PREFIX) :].partition(":")
    if not suffix:
        return RagModel(collection, None)
    if suffix == AUTO:
        return RagModel(collection, None, auto=True)
    if suffix.startswith(TIER_PREFIX) and len(suffix) > len(TIER_PREFIX):
        return RagModel(collection, suffix[len(TIER_PREFIX) :].lower())
    raise InvalidRequest(
        f"model {quote(model)} is not a RAG model; write rag:COLLECTION, rag:COLLECTION:tier-<tier> "
        "or rag:COLLECTION:auto",
        code="invalid_model",
        field="model",
    )


class RagQueryRequest(BaseModel):
    """The body of POST /v1/rag/query."""

    model_config = ConfigDict(extra="forbid")

    collection: CollectionName = Field(description="A collection, as GET /v1/models lists it after 'rag:'")
    question: StrictStr = Field(description="The question (PII policy and length limit of the collection)")
    tier: Literal["s", "m", "l", "xl", "auto"] | None = Field(
        default=None, description="The tier to answer at; auto: the router decides; default: the collection's"
    )
    filters: dict[str, StrictStr | list[StrictStr]] | None = Field(
        default=None,
        description='Only documents that match, e.g. {"source": "faq.html"} (values: alternatives)',
    )
    retrieve_only: StrictBool = Field(default=False, description="Rank the sources; call no model")


def parse_query(body: dict[str, Any]) -> RagQueryRequest:
    try:
        return RagQueryRequest.model_validate(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = format_path(error["loc"])
        got = "" if error["type"] == "missing" else f" (got {quote(error['input'])})"
        raise InvalidRequest(
            f"'{field}' {error['msg'][0].lower()}{error['msg'][1:]}{got}; send "
            '{"collection": NAME, "question": TEXT} and optionally tier, filters, retrieve_only',
            field=field,
        ) from None


def question_of(typed: OpenAIRequest) -> str:
    """The last user message's text: the question a `rag:` chat request asks."""
    assert isinstance(typed, ChatCompletionRequest)
    if typed.n not in (None, 1):
        raise InvalidRequest(
            "'n' must be 1 for a rag: model: each answer's citations are checked against its sources; "
            "leave 'n' out",
            field="n",
        )
    for message in reversed(typed.messages):
        if message.role == "user":
            return message.text()
    raise InvalidRequest(
        "a rag: model answers the last user message, and there is none; send the question as a user message",
        field="messages",
    )


def filters_of(value: Any, field: str) -> dict[str, list[str]]:
    if value is None:
        return {}
    try:
        checked = _FILTERS.validate_python(value)
    except ValidationError:
        raise InvalidRequest(f"'{field}' is not a filter object; {_FILTERS_FIX}", field=field) from None
    return parse_filters(checked)


@dataclass
class Grounded:
    """One question prepared against one collection generation, and later its checked answer."""

    collection: str
    generation: int
    pipeline: RagPipeline
    prepared: Prepared
    answer: RagAnswer | None = None

    def record(self) -> dict[str, Any]:
        """What the ledger keeps: never the question, only where the answer's grounds came from."""
        prepared = self.prepared
        entry: dict[str, Any] = {
            "collection": self.collection,
            "generation": self.generation,
            "tier": prepared.tier,
            "seconds": {stage: round(s, 6) for stage, s in prepared.seconds.items()},
            "sources": [source.chunk_id for source in prepared.sources],
            "prompt_tokens": prepared.prompt_tokens,
            "pii_masked": prepared.pii_masked,
            "injection_flagged": prepared.injection_flagged,
            "injection_dropped": prepared.injection_dropped,
            "question_injection": prepared.question_injection,
            "sources_dropped": prepared.sources_dropped,
        }
        if self.answer is not None:
            entry.update(
                cited=self.answer.cited,
                citations_removed=len(self.answer.removed_citations),
                unsupported=len(self.answer.unsupported),
            )
        return entry

    def extras(self) -> dict[str, Any]:
        """The answer's extra top-level fields: the sources and what became of the citations."""
        assert self.answer is not None
        return {
            "hpcrag_sources": [_public(source) for source in self.prepared.sources],
            "hpcrag_citations": {
                "cited": self.answer.cited,
                "removed": self.answer.removed_citations,
                "unsupported_sentences": self.answer.unsupported,
            },
        }


def _public(source: Source) -> dict[str, Any]:
    text = " ".join(source.text.split())
    excerpt = text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"
    return {**source.public(with_text=False), "excerpt": excerpt}


@dataclass
class _Opened:
    pipeline: RagPipeline
    generation: int
    checked_at: float


class RagService:
    """The gateway's pipelines, one per collection, and the RAG metrics."""

    def __init__(self, settings: RagSettings, metrics: GatewayMetrics, registry: Path | None = None) -> None:
        self.settings = settings
        self.registry = registry  # where collections served by replica groups find them
        self.metrics = metrics
        self.root = collections_root(settings.collections_dir)
        self._opened: dict[str, _Opened] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def names(self) -> list[str]:
        """The collections that exist now (blocking: lists a folder)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if _is_name(p.name) and (p / MANIFEST).is_file())

    def label(self, name: str) -> str:
        """`name` as a metric label: "" unless it is a collection this gateway opened."""
        return name if name in self._opened else ""

    def count(self, name: str, status: int) -> None:
        self.metrics.child(self.metrics.rag_requests, self.label(name), str(status)).inc()

    async def ground(
        self, name: str, question: str, tier: str | None, filters: dict[str, list[str]]
    ) -> Grounded:
        """`question` prepared against collection `name` at `tier` (None: the collection's)."""
        if tier is not None and tier not in self.settings.tiers:
            raise RagRefused(
                400,
                "invalid_tier",
                f"unknown tier {quote(tier)}; RAG tiers: {', '.join(self.settings.tiers)}",
            )
        opened = await self._pipeline(name)
        try:
            prepared = await asyncio.to_thread(opened.pipeline.prepare, question, tier, filters or None)
        except PiiRefused as exc:
            raise RagRefused(400, "pii_refused", str(exc)) from None
        except QuestionError as exc:  # the question or filters: too long, empty, an unknown filter key
            raise RagRefused(400, "invalid_request", str(exc)) from None
        except HpcragError as exc:  # ours: an embedding server down, a damaged generation
            log.error("RAG collection %s: preparing an answer failed: %s", name, exc)
            raise RagRefused(503, "rag_unavailable", str(exc)) from None
        metrics = self.metrics
        metrics.rag_retrieval.observe(sum(prepared.seconds.values()))
        if prepared.injection_flagged:
            metrics.child(metrics.rag_injection_flags, "query").inc(prepared.injection_flagged)
        if prepared.pii_masked:
            metrics.child(metrics.rag_pii_masked, "question").inc(prepared.pii_masked)
        return Grounded(name, opened.generation, opened.pipeline, prepared)

    async def finish(
        self, grounded: Grounded, text: str, seconds: dict[str, float] | None = None
    ) -> RagAnswer:
        """The answer's citations checked and its support scored (off the event loop)."""
        answer = await asyncio.to_thread(grounded.pipeline.finish, grounded.prepared, text, seconds)
        grounded.answer = answer
        if answer.removed_citations:
            self.metrics.rag_citations_removed.inc(len(answer.removed_citations))
        if answer.unsupported:
            self.metrics.rag_unsupported.inc(len(answer.unsupported))
        return answer

    async def _pipeline(self, name: str) -> _Opened:
        opened = self._opened.get(name)
        if opened is not None and time.monotonic() - opened.checked_at < GENERATION_CHECK_S:
            return opened
        generation = await asyncio.to_thread(self._generation, name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            opened = self._opened.get(name)
            if opened is None or opened.generation != generation:
                # The pipeline it replaces is dropped, not closed: a request still on it finishes, and an
                # ingest keeps the previous generation's files until the next one.
                pipeline = await asyncio.to_thread(self._open, name)
                opened = _Opened(pipeline, pipeline.loaded.manifest.generation, 0.0)
                self._opened[name] = opened
            opened.checked_at = time.monotonic()
            return opened

    def _generation(self, name: str) -> int:
        """The collection's current generation (blocking: reads its manifest)."""
        if not _is_name(name) or not Collection(self.root, name).exists():
            collections = ", ".join(RAG_PREFIX + n for n in self.names()) or "none"
            raise RagRefused(
                404,
                "model_not_found",
                f"no RAG collection {quote(name)}; collections: {collections}; "
                f"create one with `hpcrag rag ingest NAME PATH...`",
            )
        try:
            return Collection(self.root, name).manifest().generation
        except HpcragError as exc:
            raise RagRefused(503, "collection_unavailable", str(exc)) from None

    def _open(self, name: str) -> RagPipeline:
        from hpcrag.rag import factory

        try:
            settings = self.settings.for_collection(name)
            return factory.open_pipeline(Collection(self.root, name), settings, registry=self.registry)
        except HpcragError as exc:  # a damaged generation, an embedder that does not match it
            log.error("RAG collection %s cannot be opened: %s", name, exc)
            raise RagRefused(503, "collection_unavailable", str(exc)) from None


def _is_name(name: str) -> bool:
    try:
        check_name(name)
    except HpcragError:
        return False
    return True


def chat_body(body: dict[str, Any], grounded: Grounded, model: str, max_tokens: int | None) -> dict[str, Any]:
    """The caller's chat request carrying the prepared messages to `model`, its answer capped at the
    tier's max_answer_tokens (or the caller's `max_tokens`, if fewer)."""
    prepared = grounded.prepared
    cap = min(max_tokens or prepared.max_answer_tokens, prepared.max_answer_tokens)
    rewritten = {k: v for k, v in body.items() if k != FILTERS_FIELD}
    rewritten.update(model=model, messages=prepared.messages, max_tokens=cap)
    if "max_completion_tokens" in rewritten:
        rewritten["max_completion_tokens"] = cap
    return rewritten


def routed_model(wanted: RagModel, prepared: Prepared) -> str:
    return AUTO if wanted.auto else TIER_PREFIX + prepared.tier


class CitedStream:
    """The `edit` of a streamed answer: each delta through the citation filter and, unless the
    collection's PII policy is off, the streaming mask; the raw text kept."""

    def __init__(self, grounded: Grounded) -> None:
        self.grounded = grounded
        pii = grounded.pipeline.settings.pii != "off"
        self._shown = AnswerStream(len(grounded.prepared.sources), mask=pii)
        self._parts: list[str] = []
        self._base: dict[str, Any] = {"object": "chat.completion.chunk"}
        self._flushed = False

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def __call__(self, event: bytes) -> bytes:
        chunk = event_object(event)
        if chunk is None or not isinstance(chunk.get("choices"), list):
            return event
        self._base = {k: chunk[k] for k in ("id", "object", "created", "model") if k in chunk}
        changed = False
        for choice in chunk["choices"]:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            content = delta.get("content")
            shown = None
            if isinstance(content, str):
                self._parts.append(content)
                shown = self._shown.feed(content)
            if choice.get("finish_reason") is not None and not self._flushed:
                shown = (shown or "") + self._finish()
            if shown is not None:
                delta["content"] = shown
                changed = True
        return compact_event(chunk) if changed else event

    def closing(self) -> bytes:
        """The events before `data: [DONE]`: text the filter still held, then sources and citations."""
        events = b""
        rest = "" if self._flushed else self._finish()
        if rest:
            choice = {"index": 0, "delta": {"content": rest}, "finish_reason": None}
            events += compact_event({**self._base, "choices": [choice]})
        return events + compact_event({**self._base, "choices": [], **self.grounded.extras()})

    def _finish(self) -> str:
        self._flushed = True
        return self._shown.finish()


async def settle_chat(
    service: RagService,
    grounded: Grounded,
    stream: CitedStream | None,
    exchange: Exchange,
    response: web.StreamResponse,
) -> web.StreamResponse:
    """A routed chat answer made a RAG answer: citations checked, sources and citations added."""
    if exchange.status != 200:
        return response
    if stream is not None:
        await service.finish(grounded, stream.text, _generate_seconds(exchange))
        if exchange.outcome == "ok":
            exchange.tail = stream.closing() + exchange.tail
        return response
    assert isinstance(response, web.Response)
    data, text = _reply(response.body)
    if data is None:
        return _malformed(exchange, response)
    await service.finish(grounded, text, _generate_seconds(exchange))
    assert grounded.answer is not None
    data["choices"][0]["message"]["content"] = grounded.answer.answer
    data.update(grounded.extras())
    response.body = json.dumps(data).encode()
    return response


async def settle_query(
    service: RagService, grounded: Grounded, exchange: Exchange, response: web.StreamResponse
) -> web.StreamResponse:
    """A routed answer to POST /v1/rag/query as `RagAnswer.to_json()`."""
    if exchange.status != 200:
        return response
    assert isinstance(response, web.Response)
    data, text = _reply(response.body)
    if data is None:
        return _malformed(exchange, response)
    answer = await service.finish(grounded, text, _generate_seconds(exchange))
    answer.model, answer.usage = data.get("model"), data.get("usage")
    response.body = json.dumps(answer.to_json()).encode()
    return response


def _reply(body: Any) -> tuple[dict[str, Any] | None, str]:
    """A chat completion's JSON and its first choice's text; (None, "") when it is not one."""
    try:
        data = json.loads(body)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, TypeError, KeyError, IndexError):
        return None, ""
    if not isinstance(data, dict) or not isinstance(content, str | None):
        return None, ""
    return data, content or ""


def _malformed(exchange: Exchange, response: web.Response) -> web.Response:
    # Passing it on would pass on citations nobody checked.
    name = exchange.endpoint.name if exchange.endpoint else "the endpoint"
    exchange.status, exchange.outcome = 502, "upstream_malformed"
    message = f"{name} answered 200 without a chat completion (choices[0].message.content)"
    return web.json_response(
        error_body(502, "upstream_malformed", message),
        status=502,
        headers={k: v for k, v in response.headers.items() if k.lower().startswith("x-hpcrag")},
    )


def _generate_seconds(exchange: Exchange) -> dict[str, float]:
    return {"generate": exchange.latency_s} if exchange.latency_s is not None else {}


async def local_answer(
    service: RagService, grounded: Grounded, request_id: str, model: str, stream: bool
) -> tuple[bytes, str]:
    """The answer to a question no source matched, made here without a backend: (body, content type)."""
    await service.finish(grounded, NO_SOURCES)
    assert grounded.answer is not None
    base = {"id": f"rag-{request_id}", "created": int(time.time()), "model": model}
    if not stream:
        message = {"role": "assistant", "content": grounded.answer.answer}
        body = {
            **base,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            **grounded.extras(),
        }
        return json.dumps(body).encode(), "application/json"
    base["object"] = "chat.completion.chunk"
    delta = {"role": "assistant", "content": grounded.answer.answer}
    events = [
        {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**base, "choices": [], **grounded.extras()},
    ]
    return b"".join(map(compact_event, events)) + b"data: [DONE]\n\n", "text/event-stream"


def retrieved(grounded: Grounded) -> dict[str, Any]:
    """The answer to a `retrieve_only` query: the ranked sources the model would have been given."""
    prepared = grounded.prepared
    return {
        "collection": grounded.collection,
        "tier": prepared.tier,
        "sources": [source.public() for source in prepared.sources],
        "seconds": {stage: round(s, 6) for stage, s in prepared.seconds.items()},
    }
