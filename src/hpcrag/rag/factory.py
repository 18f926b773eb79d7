"""Builds the pipeline's parts from `rag.yaml` settings: the embedder, the reranker, the pipeline."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcrag.config.rag_schema import CollectionSettings, EmbedderSettings, RerankSettings
from hpcrag.errors import HpcragError
from hpcrag.rag.collection import Collection
from hpcrag.rag.types import Embedder

if TYPE_CHECKING:
    from hpcrag.rag.rerank import Reranker


def _secret(file: str | None, what: str) -> str | None:
    if file is None:
        return None
    path = Path(file).expanduser()
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise HpcragError(f"cannot read the {what} key file {path}: {exc.strerror or exc}") from None
    if not value:
        raise HpcragError(f"the {what} key file {path} is empty")
    return value


@cache
def _local(model: str, device: str, batch_size: int) -> Embedder:
    from hpcrag.rag.embed import LocalEmbedder

    return LocalEmbedder(model, device=device, batch_size=batch_size)


def make_embedder(settings: EmbedderSettings) -> Embedder:
    """The configured embedder; a local model is loaded once per process and shared."""
    if settings.kind == "local":
        return _local(settings.model, settings.device, settings.batch_size)
    from hpcrag.rag.embed import RemoteEmbedder

    assert settings.url is not None
    return RemoteEmbedder(
        settings.url,
        settings.model,
        api_key=_secret(settings.api_key_file, "embedder"),
        dim=settings.dim,
        max_tokens=settings.max_tokens,
        tokenizer=settings.tokenizer,
        batch_size=settings.batch_size,
        timeout_s=settings.timeout_s,
        verify=settings.ca_file or True,
    )


def make_reranker(settings: RerankSettings) -> Reranker | None:
    if settings.kind == "none":
        return None
    from hpcrag.rag import rerank

    assert settings.url is not None and settings.model is not None
    key = _secret(settings.api_key_file, "reranker")
    if settings.kind == "cross-encoder":
        return rerank.CrossEncoderReranker(settings.url, settings.model, key)
    return rerank.LlmJudgeReranker(settings.url, settings.model, key)


def open_pipeline(
    collection: Collection,
    settings: CollectionSettings,
    search_endpoint: Path | None = None,
    helper: Any | None = None,
    registry: Path | None = None,
) -> Any:
    """A ready `RagPipeline` over the collection's current generation; its dense side through a
    search service (`search_endpoint`), the settings' replica group (found in `registry`), or in
    this process."""
    from hpcrag.rag.pipeline import RagPipeline
    from hpcrag.rag.retrieve import LoadedCollection

    replicas = None
    if settings.search_replicas and search_endpoint is None:
        from hpcrag.search.replicas import ReplicaSet

        if registry is None:
            raise HpcragError(
                f"collection {collection.name!r} is served by replica group {settings.search_replicas!r}, "
                "but no endpoint registry was given (serving.registry in site-configs/serving.yaml)"
            )
        replicas = ReplicaSet.from_registry(registry, settings.search_replicas)
    loaded = LoadedCollection(collection, search_endpoint, replicas)
    return RagPipeline(
        loaded, make_embedder(settings.embedder), settings, make_reranker(settings.rerank), helper
    )
