"""How hard is a request? A score from 0 (trivial) to 1 (frontier), behind a one-method interface.

`HeuristicScorer` is the PRD §9 baseline: length, question words, technical terms and the number of
parts. A trained classifier replaces it by implementing `ComplexityScorer` and being named in
`gateway.yaml` (`scorer: package.module:ClassName`; it is built with the gateway settings).
"""

from __future__ import annotations

import importlib
import re
from typing import Protocol

from hpcrag.config.schema import Gateway
from hpcrag.errors import HpcragError

QUESTION_WORDS = ("why", "how", "explain", "analyze", "analyse", "compare")
_AND = re.compile(r"\band\b")


class ComplexityScorer(Protocol):
    def score(self, text: str) -> float: ...


class HeuristicScorer:
    def __init__(self, settings: Gateway) -> None:
        self.terms = tuple(t.lower() for t in settings.technical_terms)

    def features(self, text: str) -> dict[str, int]:
        lowered = text.lower()
        return {
            "length": len(text),
            "question_words": sum(1 for w in QUESTION_WORDS if w in lowered),
            "technical_terms": sum(1 for t in self.terms if t in lowered),
            "multi_part": text.count("?") + len(_AND.findall(lowered)),
        }

    def score(self, text: str) -> float:
        f = self.features(text)
        total = (
            min(f["length"] / 500, 0.3)
            + f["question_words"] * 0.1
            + f["technical_terms"] * 0.05
            + f["multi_part"] * 0.15
        )
        return min(total, 1.0)


def load_scorer(settings: Gateway) -> ComplexityScorer:
    module_name, _, class_name = settings.scorer.partition(":")
    try:
        scorer_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise HpcragError(
            f"cannot load the complexity scorer {settings.scorer!r} ({exc}); "
            "set 'scorer' in site-configs/gateway.yaml to module:ClassName"
        ) from None
    return scorer_class(settings)
