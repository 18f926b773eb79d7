"""BM25 keyword search: ranking, the row filter inside the top k, edge cases, and save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpcrag.errors import HpcragError
from hpcrag.rag.sparse import SparseIndex

DOCS = [
    "Slurm schedules batch jobs on compute nodes",
    "Submit a batch script with sbatch",
    "GPUs are requested with --gres or --gpus",
    "The cat sat on the mat",
    "Batch batch batch processing of jobs",
    "Scheduling jobs fairly: the fairshare factor",
    "Zürich café: naïve résumé",
]
IDS = np.arange(100, 100 + len(DOCS), dtype=np.int64)


@pytest.fixture(scope="module")
def index() -> SparseIndex:
    return SparseIndex.build(DOCS, IDS)


def test_known_items_rank_in_bm25_order(index: SparseIndex) -> None:
    ids, scores = index.search("batch jobs", k=10)
    # Three "batch" in a short document beat one "batch" and one "jobs"; "jobs" alone comes last.
    assert ids.tolist() == [104, 100, 101, 105]
    assert scores.dtype == np.float32
    assert (np.diff(scores) < 0).all() and (scores > 0).all()
    assert index.search("batch jobs", k=2)[0].tolist() == [104, 100]


def test_stemming_lowercase_and_unicode(index: SparseIndex) -> None:
    assert index.search("scheduling", k=5)[0].tolist() == [105, 100]  # schedules, scheduling
    assert index.search("SBATCH", k=5)[0].tolist() == [101]
    assert index.search("ZÜRICH résumé", k=5)[0].tolist() == [106]


@pytest.mark.parametrize("query", ["", "   ", "the of and a", "unknownword", "!!"])
def test_queries_without_known_terms_find_nothing(index: SparseIndex, query: str) -> None:
    ids, scores = index.search(query, k=5)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert (ids.size, scores.size) == (0, 0)


def test_k_larger_than_the_corpus_and_k_zero(index: SparseIndex) -> None:
    assert index.search("batch", k=1000)[0].tolist() == [104, 101, 100]
    assert index.search("batch", k=0)[0].size == 0


def test_ties_go_in_row_order_also_at_the_k_boundary() -> None:
    sparse = SparseIndex.build(["same words"] * 50, np.arange(50)[::-1].copy())
    for k in (1, 7, 49, 50, 60):
        assert sparse.search("words", k)[0].tolist() == list(range(49, 49 - min(k, 50), -1))


def test_a_corpus_of_one_document() -> None:
    single = SparseIndex.build(["only one document about partitions"], np.array([7]))
    assert len(single) == 1 and single.ids.tolist() == [7]
    assert single.search("partition", k=10)[0].tolist() == [7]
    assert single.search("nodes", k=10)[0].size == 0


def test_filter_is_applied_before_the_top_k() -> None:
    # Twenty documents mention gpu; the short ones (rows 0-16) outrank the long ones (17-19).
    texts = [f"gpu note {i}" for i in range(17)] + [f"gpu {'filler words here ' * 20} {i}" for i in range(3)]
    texts.append("nothing relevant")  # row 20
    sparse = SparseIndex.build(texts, np.arange(len(texts)) * 10)
    allowed = np.zeros(len(texts), dtype=bool)
    allowed[[17, 19, 20]] = True
    ids, scores = sparse.search("gpu", k=5, allowed=allowed)
    # A filter after an unfiltered top 5 would find none of these; row 20 does not match the query.
    assert sorted(ids.tolist()) == [170, 190]
    assert (scores > 0).all()
    assert sparse.search("gpu", k=1, allowed=allowed)[0].size == 1
    assert sparse.search("gpu", k=5, allowed=np.zeros(len(texts), dtype=bool))[0].size == 0
    unfiltered = sparse.search("gpu", k=30)[0]
    assert len(unfiltered) == 20 and set(unfiltered[-3:].tolist()) == {170, 180, 190}


def test_a_mask_of_the_wrong_shape_or_type_is_refused(index: SparseIndex) -> None:
    with pytest.raises(ValueError, match="boolean mask of 7 rows"):
        index.search("batch", k=5, allowed=np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="boolean mask of 7 rows"):
        index.search("batch", k=5, allowed=np.ones(7))


def test_save_load_round_trip_and_replacement(index: SparseIndex, tmp_path: Path) -> None:
    folder = tmp_path / "bm25"
    index.save(folder)
    loaded = SparseIndex.load(folder)
    assert loaded.ids.tolist() == IDS.tolist() and len(loaded) == len(DOCS)
    mask = np.array([True, False, True, True, True, False, True])
    for query in ["batch jobs", "scheduling", "Zürich", "the"]:
        for allowed in (None, mask):
            expected, got = index.search(query, 10, allowed), loaded.search(query, 10, allowed)
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])

    SparseIndex.build(["an entirely new corpus"], np.array([1])).save(folder)
    assert SparseIndex.load(folder).search("corpus", 5)[0].tolist() == [1]
    assert [path.name for path in tmp_path.iterdir()] == ["bm25"]  # no staging or old folder left


def test_load_of_a_missing_or_damaged_index(index: SparseIndex, tmp_path: Path) -> None:
    with pytest.raises(HpcragError, match=r"no keyword .* index in .*nowhere; build the index"):
        SparseIndex.load(tmp_path / "nowhere")
    folder = tmp_path / "bm25"
    index.save(folder)
    (folder / "ids.npy").write_bytes(b"garbage")
    with pytest.raises(HpcragError, match=r"index in .*bm25 is damaged .*; rebuild the index"):
        SparseIndex.load(folder)
    index.save(folder)
    next(folder.glob("data.csc.index.npy")).unlink()
    with pytest.raises(HpcragError, match="is damaged"):
        SparseIndex.load(folder)


def test_build_checks_its_input() -> None:
    with pytest.raises(ValueError, match="3 texts need as many ids"):
        SparseIndex.build(["a b", "c d", "e f"], np.array([1, 2]))
    with pytest.raises(HpcragError, match="nothing to index"):
        SparseIndex.build([], np.array([], dtype=np.int64))
