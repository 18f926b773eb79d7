"""Optional rerank stage: re-score fused candidates with a model that reads the query and passage together.

Two HTTP implementations, both off unless `rag.yaml` turns one on (a bearer key, a timeout, and an
HpcragError naming the URL, never the key, when a call fails). The cross-encoder is called on its vLLM
server directly (the gateway has no rerank route); the LLM judge is any chat API, the gateway included:

- `CrossEncoderReranker`: a cross-encoder served by vLLM, through its rerank API (POST /v1/rerank,
  {"model", "query", "documents", "top_n"} -> {"results": [{"index", "relevance_score"}]}) or its score
  API (POST /v1/score, {"model", "text_1", "text_2"} -> {"data": [{"index", "score"}]}).
- `LlmJudgeReranker`: a chat model asked, at temperature 0 and in one request, to rate every fenced,
  numbered passage 0-10 as JSON.

Every implementation returns the scored candidates by score (ties keep their fused order) with
scores["rerank"] set, then the ones the model did not score in their fused order. Those take the lowest
score given, so that stages after this one, which read `score`, keep them last.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal, Protocol

from hpcrag.errors import HpcragError
from hpcrag.rag.fusion import Candidate

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
JUDGE_MAX_SCORE = 10.0


class Reranker(Protocol):
    name: str

    def rerank(self, query: str, candidates: Sequence[Candidate], texts: dict[int, str]) -> list[Candidate]:
        """`candidates` re-scored against `query`; `texts[row]` is each candidate's passage."""


class CrossEncoderReranker:
    """A cross-encoder behind vLLM's rerank API (or its score API with `api="score"`).

    `top_n` asks the server for only the n best; the rest count as not scored.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        top_n: int | None = None,
        api: Literal["rerank", "score"] = "rerank",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.name = f"cross-encoder:{model}"
        self.url = f"{_v1(url)}/{api}"
        self.model = model
        self.top_n = top_n
        self.api = api
        self._api_key = api_key
        self._timeout_s = timeout_s

    def rerank(self, query: str, candidates: Sequence[Candidate], texts: dict[int, str]) -> list[Candidate]:
        if not candidates:
            return []
        documents = [texts[c.row] for c in candidates]
        if self.api == "rerank":
            body: dict[str, Any] = {"model": self.model, "query": query, "documents": documents}
            if self.top_n is not None:
                body["top_n"] = self.top_n
            data = _post(self.url, body, self._api_key, self._timeout_s)
            scored = _indexed_scores(data, "results", "relevance_score", self.url)
        else:
            body = {"model": self.model, "text_1": query, "text_2": documents}
            data = _post(self.url, body, self._api_key, self._timeout_s)
            scored = _indexed_scores(data, "data", "score", self.url)
        return _reordered(candidates, scored)


JUDGE_INSTRUCTIONS = """\
You rate search results. For the query below, rate how well each numbered passage answers it, from 0 \
(irrelevant) to 10 (answers it fully). Judge only relevance to the query.

{fence_rules}

Answer with one JSON object and nothing else, mapping each passage id to its rating, for example \
{{"1": 7, "2": 0}}."""


class LlmJudgeReranker:
    """A chat model as a judge: one request rates all passages (each cut to `max_passage_chars`)."""

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_passage_chars: int = 2000,
    ) -> None:
        self.name = f"llm-judge:{model}"
        self.url = f"{_v1(url)}/chat/completions"
        self.model = model
        self.max_passage_chars = max_passage_chars
        self._api_key = api_key
        self._timeout_s = timeout_s

    def rerank(self, query: str, candidates: Sequence[Candidate], texts: dict[int, str]) -> list[Candidate]:
        from hpcrag.rag import injection

        if not candidates:
            return []
        nonce = injection.new_nonce()
        passages = "\n\n".join(
            injection.fence(number, texts[c.row][: self.max_passage_chars], f"passage {number}", nonce)
            for number, c in enumerate(candidates, start=1)
        )
        body = {
            "model": self.model,
            "temperature": 0,
            # A rating is a few tokens; the margin covers a model that adds spaces or a code fence.
            "max_tokens": 16 * len(candidates) + 64,
            "messages": [
                {
                    "role": "system",
                    "content": JUDGE_INSTRUCTIONS.format(fence_rules=injection.fence_instructions(nonce)),
                },
                {"role": "user", "content": f"Query: {query}\n\nPassages:\n\n{passages}"},
            ],
        }
        data = _post(self.url, body, self._api_key, self._timeout_s)
        try:
            answer = data["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise HpcragError(f"reranker at {self.url} answered without a chat message") from None
        ratings = parse_judgement(answer, len(candidates))
        if not ratings:
            log.warning("reranker at %s gave no usable ratings; keeping the fused order", self.url)
        return _reordered(candidates, {number - 1: score for number, score in ratings.items()})


def parse_judgement(answer: str, n_passages: int) -> dict[int, float]:
    """Passage number (1-based) -> rating clipped to 0-10, from the first JSON value in `answer` that
    holds any: {"1": 7}, {"scores": {...}}, [7, 3], [{"id": 1, "score": 7}], inside prose or ``` fences."""
    decoder = json.JSONDecoder()
    # Objects before arrays: prose such as "passage [2] is best" decodes as the array [2].
    for opening in "{[":
        for start in (i for i, char in enumerate(answer) if char == opening):
            try:
                value, _ = decoder.raw_decode(answer, start)
            except ValueError:
                continue
            ratings = {n: s for n, s in _ratings(value).items() if 1 <= n <= n_passages}
            if ratings:
                return {n: min(max(s, 0.0), JUDGE_MAX_SCORE) for n, s in ratings.items()}
    return {}


def _ratings(value: Any) -> dict[int, float]:
    if isinstance(value, dict):
        for key in ("scores", "ratings", "results"):
            if key in value:
                return _ratings(value[key])
        return {
            n: s
            for n, s in ((_int(k), _float(v)) for k, v in value.items())
            if n is not None and s is not None
        }
    if isinstance(value, list):
        if all(isinstance(item, dict) for item in value):
            pairs = (
                (
                    _field(item, "id", "passage", "index", "number"),
                    _field(item, "score", "rating", "relevance"),
                )
                for item in value
            )
            return {
                n: s for n, s in ((_int(n), _float(s)) for n, s in pairs) if n is not None and s is not None
            }
        return {n: s for n, s in ((n, _float(v)) for n, v in enumerate(value, start=1)) if s is not None}
    return {}


def _field(item: dict[str, Any], *names: str) -> Any:
    return next((item[name] for name in names if name in item), None)


def _int(value: Any) -> int | None:
    """A passage number from 3, "3", "[3]" or "passage 3"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    found = re.fullmatch(r"\D{0,12}?(\d{1,6})\D{0,2}", str(value).strip())
    return int(found.group(1)) if found else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN is no rating


def _v1(url: str) -> str:
    """The API root: `url` with /v1 appended unless it already ends so (gateway or vLLM, either form)."""
    root = url.rstrip("/")
    return root if root.endswith("/v1") else root + "/v1"


def _post(url: str, body: dict[str, Any], api_key: str | None, timeout_s: float) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.post(url, json=body, headers=headers, timeout=timeout_s)
    except httpx.TimeoutException:
        raise HpcragError(
            f"reranker at {url} did not answer within {timeout_s:g} s; raise the timeout"
        ) from None
    except httpx.HTTPError as exc:
        raise HpcragError(f"reranker at {url} unreachable ({exc}); check rerank.url in rag.yaml") from None
    if response.status_code != 200:
        reason = " ".join(response.text.split())[:200] or response.reason_phrase
        raise HpcragError(
            f"reranker at {url} answered {response.status_code}: {reason}; check rerank.url, model and key"
        )
    try:
        return response.json()
    except ValueError:
        raise HpcragError(f"reranker at {url} answered with a body that is not JSON") from None


def _indexed_scores(data: Any, items: str, score: str, url: str) -> dict[int, float]:
    """Document index -> score from a rerank or score answer."""
    try:
        return {int(item["index"]): float(item[score]) for item in data[items]}
    except (KeyError, TypeError, ValueError):
        raise HpcragError(f"reranker at {url} answered without {items}[].index and {score}") from None


def _reordered(candidates: Sequence[Candidate], scored: dict[int, float]) -> list[Candidate]:
    """Scored candidates by score (stable), then the others in their order, at the lowest score given."""
    scored = {i: s for i, s in scored.items() if 0 <= i < len(candidates)}
    order = sorted(scored, key=lambda i: (-scored[i], i))
    floor = min(scored.values(), default=None)
    result = [
        replace(
            candidates[i],
            score=scored[i],
            scores={**candidates[i].scores, "rerank": scored[i]},
            ranks=dict(candidates[i].ranks),
        )
        for i in order
    ]
    for i, candidate in enumerate(candidates):
        if i not in scored:
            score = candidate.score if floor is None else floor
            result.append(
                replace(candidate, score=score, scores=dict(candidate.scores), ranks=dict(candidate.ranks))
            )
    return result
