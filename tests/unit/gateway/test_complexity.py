from __future__ import annotations

import pytest

from hpcrag.errors import HpcragError
from hpcrag.gateway.complexity import HeuristicScorer, load_scorer
from hpcrag.gateway.endpoints import EndpointTable
from hpcrag.gateway.router import Router

SHORT = "What is 2+2?"
ANALYTICAL = (
    "Explain how a distributed inference architecture splits a transformer model across GPUs, and "
    "compare tensor parallel and pipeline parallel implementation. Why do latency and throughput "
    "differ between them? How would you analyze the optimization trade-offs for a 70B model?"
)


def test_prd_features_and_score(config) -> None:
    scorer = HeuristicScorer(config.gateway)
    assert scorer.features(SHORT) == {
        "length": 12,
        "question_words": 0,
        "technical_terms": 0,
        "multi_part": 1,
    }
    assert scorer.score(SHORT) == pytest.approx(12 / 500 + 0.15)
    # how, explain, compare, why, analyze; model, inference, architecture, ... ; 2 "?" and 3 "and"
    assert scorer.features(ANALYTICAL) == {
        "length": 272,
        "question_words": 5,
        "technical_terms": 10,
        "multi_part": 5,
    }
    assert scorer.score(ANALYTICAL) == 1.0


def test_tier_choice_follows_thresholds_and_quality_boost(config) -> None:
    router = Router(config, EndpointTable(config), HeuristicScorer(config.gateway))
    assert router.tier_for(0.17, "medium")[1] == "s"
    assert router.tier_for(0.17, "maximum") == (pytest.approx(0.47), "m")
    assert router.tier_for(0.45, "low")[1] == "s"
    assert router.tier_for(0.55, "medium")[1] == "l"
    assert router.tier_for(1.0, "medium")[1] == "xl"


class LengthScorer:
    def __init__(self, settings) -> None:
        self.settings = settings

    def score(self, text: str) -> float:
        return min(1.0, len(text) / 100)


def test_a_trained_scorer_replaces_the_heuristic(config) -> None:
    settings = config.gateway.model_copy(update={"scorer": f"{__name__}:LengthScorer"})
    scorer = load_scorer(settings)
    assert isinstance(scorer, LengthScorer)
    assert scorer.score("x" * 50) == 0.5


def test_an_unloadable_scorer_is_named(config) -> None:
    settings = config.gateway.model_copy(update={"scorer": "no.such.module:Thing"})
    with pytest.raises(HpcragError, match=r"cannot load the complexity scorer 'no.such.module:Thing'"):
        load_scorer(settings)
