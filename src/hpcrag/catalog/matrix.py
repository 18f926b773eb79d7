"""The PRD §4 feasibility matrix as cells: (infrastructure level, model tier, GPU type) -> rating."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hpcrag.config import Config
from hpcrag.config.schema import UnknownNameError

SYMBOLS = {"recommended": "✅", "viable": "✓", "marginal": "⚠️", "not-recommended": "❌"}
# How much a rating is worth when configurations are scored against each other.
RATING_WEIGHT = {"recommended": 1.0, "viable": 0.7, "marginal": 0.4, "not-recommended": 0.0}


@dataclass(frozen=True)
class Cell:
    infra: str
    tier: str
    gpu: str
    rating: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def levels(config: Config) -> list[str]:
    return list(config.matrix.levels)


def cells(config: Config, infra: str | None = None) -> list[Cell]:
    """Every cell, level by level in file order, tiers S..XL, GPUs in the PRD's column order."""
    if infra is not None and infra not in config.matrix.levels:
        raise UnknownNameError("infrastructure level", infra, levels(config))
    chosen = [infra] if infra is not None else levels(config)
    return [
        Cell(level, tier, gpu, config.matrix.levels[level][tier][index])
        for level in chosen
        for tier in config.tiers
        for index, gpu in enumerate(config.matrix.columns)
    ]


def rating(config: Config, infra: str, tier: str, gpu: str) -> str:
    config.tier(tier)
    config.gpu(gpu)
    row = config.matrix.levels[infra][tier.lower()]
    return row[config.matrix.columns.index(gpu)]
