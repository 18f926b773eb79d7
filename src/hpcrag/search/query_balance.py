"""Spreading the ranks' search work by a sample of real queries (`index build --query-sample`).

The grouping balances the shards' vectors and keeps neighbouring lists together. Real queries do
not spread like the vectors: on the man pages, 59% of one-line command descriptions fall in one
shard of four, and every batch waits for the rank that owns it. Given where sample queries fall
(each one's `QUERY_PROBES` nearest lists: a query searches the shards that own them), this local
search moves lists from the busiest rank's shards to other ranks' shards while that lowers the
busiest rank's searches (then all searches). A list moves alone or with its partner, the list that
sample queries most often probe with it, so that a crowd of queries over a few lists is not split
over two shards. A move that would overfill its destination is paired with a list moved back, so
that each shard stays within `BALANCE_SLACK` of its share of the vectors (a shard the grouping left
outside gets no further out). Moves are ranked by estimate and measured before they are kept.
"""

from __future__ import annotations

import numpy as np

from hpcrag.search.grouping import BALANCE_SLACK, reach_changes

QUERY_PROBES = 2  # a query's searches: the shards of its 2 nearest lists (most reach 1 or 2 shards)
MAX_MOVES = 4096  # a bound on the steps; each step kept lowers (busiest, total) strictly anyway
TRIES = 16  # candidate moves measured per step


def rank_loads(probes: np.ndarray, assignment: np.ndarray, shard_rank: np.ndarray) -> np.ndarray:
    """Searches per rank: each query searches every shard owning one of its probed lists."""
    nshards = shard_rank.size
    owner = assignment[probes]
    reached = np.zeros((probes.shape[0], nshards), dtype=bool)
    reached[np.arange(probes.shape[0])[:, None], owner] = True
    return np.bincount(shard_rank, weights=reached.sum(axis=0), minlength=int(shard_rank.max()) + 1)


def balance_query_load(
    probes: np.ndarray, weights: np.ndarray, assignment: np.ndarray, shard_rank: np.ndarray
) -> np.ndarray:
    """list -> shard with the busiest rank's searches lowered; `probes` (nq, QUERY_PROBES) are the
    sample queries' nearest lists, `weights` the lists' sizes, `shard_rank` each shard's rank."""
    nshards = shard_rank.size
    assignment = assignment.copy()
    share = weights.sum() / nshards
    bounds = (share * (1 + BALANCE_SLACK), share * (1 - BALANCE_SLACK))
    together = _PairCounts(probes, assignment.size)
    loads = rank_loads(probes, assignment, shard_rank)
    for _ in range(MAX_MOVES):
        busiest = int(np.argmax(loads))
        size = np.bincount(assignment, weights=weights, minlength=nshards)
        alone, absent = reach_changes(probes, assignment, nshards)
        estimated = []
        for source in np.flatnonzero(shard_rank == busiest):
            units = together.units(source, assignment)
            for dest in np.flatnonzero(shard_rank != busiest):
                for relief, extra, outgoing, incoming in _moves(
                    units, source, dest, assignment, weights, size, bounds, (alone, absent, together)
                ):
                    after = loads.copy()
                    after[busiest] -= relief
                    after[shard_rank[dest]] += extra
                    estimated.append(((after.max(), after.sum()), source, dest, outgoing, incoming))
        moved = False
        # An estimate misses queries near both the lists going and the list coming back: measure,
        # best estimate first.
        for _, source, dest, outgoing, incoming in sorted(estimated, key=lambda item: item[0])[:TRIES]:
            trial = assignment.copy()
            trial[outgoing[outgoing >= 0]] = dest
            if incoming >= 0:
                trial[incoming] = source
            measured = rank_loads(probes, trial, shard_rank)
            if (measured.max(), measured.sum()) < (loads.max(), loads.sum()):
                assignment, loads, moved = trial, measured, True
                break
        if not moved:
            break
    return assignment


class _PairCounts:
    """How many sample queries probe each pair of lists (their two probes), without a dense matrix."""

    def __init__(self, probes: np.ndarray, nlist: int) -> None:
        low, high = probes.min(axis=1), probes.max(axis=1)
        self.nlist = nlist
        self.keys, self.counts = np.unique(low * nlist + high, return_counts=True)

    def count(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        keys = np.minimum(first, second) * self.nlist + np.maximum(first, second)
        at = np.minimum(np.searchsorted(self.keys, keys), max(self.keys.size - 1, 0))
        return np.where(self.keys[at] == keys, self.counts[at], 0).astype(np.float64)

    def units(self, source: int, assignment: np.ndarray) -> np.ndarray:
        """(n, 2) what may leave `source` in one move: each list alone (second column -1), and each
        list with its partner there, the list of the shard most often probed with it."""
        lists = np.flatnonzero(assignment == source)
        alone = np.stack([lists, np.full(lists.size, -1)], axis=1)
        low, high = self.keys // self.nlist, self.keys % self.nlist
        inside = (assignment[low] == source) & (assignment[high] == source) & (low != high)
        ends = np.concatenate([low[inside], high[inside]])
        partners = np.concatenate([high[inside], low[inside]])
        counts = np.tile(self.counts[inside], 2)
        order = np.lexsort((-counts, ends))  # per list, its most shared partner first
        first = np.unique(ends[order], return_index=True)[1]
        pairs = np.sort(np.stack([ends[order][first], partners[order][first]], axis=1), axis=1)
        return np.concatenate([alone, np.unique(pairs, axis=0).reshape(-1, 2)])


def _moves(
    units: np.ndarray,
    source: int,
    dest: int,
    assignment: np.ndarray,
    weights: np.ndarray,
    size: np.ndarray,
    bounds: tuple[float, float],
    reach: tuple[np.ndarray, np.ndarray, _PairCounts],
) -> list[tuple[float, float, np.ndarray, int]]:
    """The `TRIES` best moves of a unit from `source` to `dest`, each with if needed a list moved back
    to keep both shards' sizes in bounds, by the searches they save the source rank net of those they
    add: (searches the source rank saves, searches the destination rank gains, lists out, list back
    or -1). With two probes per query, a query probing both lists of a pair has both on `source`:
    it stops searching there, and starts searching `dest`, once."""
    alone, absent, together = reach
    first, second = units[:, 0], units[:, 1]
    paired = second >= 0
    other = np.where(paired, second, first)
    both = np.where(paired, together.count(first, other), 0.0)
    going = np.where(paired, weights[first] + weights[other], weights[first])
    relief_out = alone[first, source] + np.where(paired, alone[other, source] + both, 0.0)
    extra_out = absent[first, dest] + np.where(paired, absent[other, dest] - both, 0.0)
    back = np.flatnonzero(assignment == dest)
    # Rows: a unit leaving source; columns: no list back (first), or a list of dest coming back.
    relief = relief_out[:, None] - np.concatenate([[0.0], absent[back, source]])[None, :]
    extra = extra_out[:, None] - np.concatenate([[0.0], alone[back, dest]])[None, :]
    moved = going[:, None] - np.concatenate([[0.0], weights[back]])[None, :]
    fits = _in_bounds(size[dest] + moved, size[dest], bounds) & _in_bounds(
        size[source] - moved, size[source], bounds
    )
    # The source keeps a list: what it has, less the unit, plus a list back.
    left = (assignment == source).sum() - np.where(paired, 2, 1)[:, None] + (np.arange(back.size + 1) > 0)
    fits &= left >= 1
    score = np.where(fits & (relief > 0), relief - extra, -np.inf).ravel()
    found = []
    for flat in np.argsort(-score, kind="stable")[:TRIES]:
        if not np.isfinite(score[flat]):
            break
        row, column = np.unravel_index(flat, relief.shape)
        incoming = -1 if column == 0 else int(back[column - 1])
        found.append((float(relief[row, column]), float(extra[row, column]), units[row], incoming))
    return found


def _in_bounds(new: np.ndarray, old: float, bounds: tuple[float, float]) -> np.ndarray:
    """Whether a shard's new size is within bounds, or, for a shard the grouping left outside them
    (a list too large to place), no further out than before."""
    ceiling, floor = bounds
    return (new <= max(ceiling, old)) & (new >= min(floor, old))
