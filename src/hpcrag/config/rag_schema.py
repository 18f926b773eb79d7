"""Pydantic model of `site-configs/rag.yaml`: RAG settings by tier (PRD §8) and per-collection overrides.

`RagSettings.for_collection(name, tier)` gives the effective settings of one collection at one tier:
the tier's row of the PRD's "RAG Configuration by Tier" table, then the shared sections, then the
collection's own overrides, validated again as a whole so that an override error names its key path.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, StringConstraints, model_validator

from hpcrag.errors import QuestionError

COLLECTION_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
CollectionName = Annotated[str, StringConstraints(pattern=COLLECTION_NAME_PATTERN)]
RagTier = Literal["s", "m", "l", "xl"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TierRag(_Model):
    """One row of the PRD table: chunk size, top-k and context budget of a tier."""

    chunk_tokens: PositiveInt = Field(description="Chunk size in the embedder's word pieces")
    overlap: float = Field(default=0.2, ge=0, lt=0.5, description="Overlap between chunks, a fraction")
    top_k: PositiveInt = Field(description="Sources given to the model")
    context_tokens: PositiveInt = Field(description="Whole prompt plus answer budget, in tokens")
    max_answer_tokens: PositiveInt = 512


class EmbedderSettings(_Model):
    kind: Literal["local", "remote"] = "local"
    model: str = "all-MiniLM-L6-v2"
    device: str = Field(default="cpu", description="local: torch device, e.g. cuda on a GPU node")
    batch_size: PositiveInt = 64
    url: str | None = Field(default=None, description="remote: base URL of an OpenAI /v1/embeddings API")
    api_key_file: str | None = Field(default=None, description="remote: file holding the bearer key")
    ca_file: str | None = None
    dim: PositiveInt | None = None
    max_tokens: PositiveInt = 254
    tokenizer: str = Field(
        default="all-MiniLM-L6-v2", description="remote: local tokenizer that sizes chunks"
    )
    timeout_s: float = Field(default=60, gt=0)

    @model_validator(mode="after")
    def _remote_needs_url(self) -> EmbedderSettings:
        if self.kind == "remote" and not self.url:
            raise ValueError("a remote embedder needs url: the base URL of an OpenAI-compatible API")
        return self


class RetrievalSettings(_Model):
    fusion: Literal["convex", "rrf", "dense", "bm25"] = "convex"
    hybrid_alpha: float = Field(default=0.7, ge=0, le=1, description="Dense weight of convex fusion")
    rrf_k: PositiveInt = 60
    candidates: PositiveInt = Field(default=50, description="Chunks each side fetches before fusion")
    nprobe: int = Field(default=0, ge=0, description="Lists the dense index scans; 0 means all (exact)")
    mmr_lambda: float = Field(default=0.7, ge=0, le=1)
    max_chunks_per_document: PositiveInt = 3


class RerankSettings(_Model):
    kind: Literal["none", "cross-encoder", "llm-judge"] = "none"
    url: str | None = None
    model: str | None = None
    api_key_file: str | None = None
    candidates: PositiveInt = Field(default=20, description="Fused candidates the reranker sees")

    @model_validator(mode="after")
    def _needs_endpoint(self) -> RerankSettings:
        if self.kind != "none" and not (self.url and self.model):
            raise ValueError(f"rerank kind {self.kind!r} needs url and model")
        return self


class QuerySettings(_Model):
    max_question_chars: PositiveInt = 4000
    expansion: bool = Field(default=False, description="Ask the gateway for extra search phrasings")
    hyde: bool = Field(default=False, description="Embed a hypothetical answer written by the gateway")


class GroundingSettings(_Model):
    method: Literal["embedding", "lexical"] = Field(
        default="embedding", description="Support of a sentence: embedding cosine, or content-word overlap"
    )
    support_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Below this, an answer sentence is flagged as unsupported (default: the method's own)",
    )


class _PipelineSettings(_Model):
    """What a collection may set for itself: shared by rag.yaml's top level and its overrides."""

    tiers: dict[RagTier, TierRag] = Field(min_length=4)
    embedder: EmbedderSettings = EmbedderSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    rerank: RerankSettings = RerankSettings()
    query: QuerySettings = QuerySettings()
    grounding: GroundingSettings = GroundingSettings()
    pii: Literal["mask", "refuse", "off"] = "mask"
    injection: Literal["flag", "drop", "off"] = "flag"
    nshards: PositiveInt = Field(default=2, description="Shards of the dense index")
    search_replicas: str | None = Field(
        default=None,
        pattern=COLLECTION_NAME_PATTERN,
        description="Search the dense side through this replica group (hpcrag index serve-group of the "
        "collection's dense/ folder) instead of opening the index in the process",
    )


class CollectionSettings(_PipelineSettings):
    """The effective settings of one collection at one tier."""

    tier: RagTier

    @property
    def row(self) -> TierRag:
        return self.tiers[self.tier]

    def at_tier(self, tier: str) -> CollectionSettings:
        """The same settings at another tier (validated: an unknown tier is a clear error)."""
        if tier.lower() not in self.tiers:
            raise QuestionError(f"unknown tier {tier!r}; tiers: {', '.join(self.tiers)}")
        return self.model_copy(update={"tier": tier.lower()})


class RagSettings(_PipelineSettings):
    """The whole of `rag.yaml`."""

    collections_dir: str = Field(description="Folder of the collections (relative: from the repository)")
    default_tier: RagTier = "s"
    collections: dict[CollectionName, dict[str, Any]] = Field(
        default={}, description="Per-collection overrides of any key above but collections_dir"
    )

    def for_collection(self, name: str, tier: str | None = None) -> CollectionSettings:
        """Effective settings of collection `name` (tier: the override's, else `default_tier`)."""
        base = self.model_dump(exclude={"collections", "collections_dir", "default_tier"})
        override = dict(self.collections.get(name, {}))
        base["tier"] = override.pop("tier", self.default_tier)
        merged = _deep_merge(base, override)
        if tier is not None:
            merged["tier"] = tier.lower()
        return CollectionSettings.model_validate(merged)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
