"""Grouping the inverted lists into shards: neighbouring centroids together, shard sizes balanced.

A query probes its `nprobe` nearest centroids; those centroids are close to each other, so if
neighbouring centroids share a shard the query touches few shards. We cluster the centroids into
`nshards` groups (k-means weighted by list size), then assign lists to groups greedily under a
capacity so that no shard holds much more than its share of vectors, refining the group centres a
few times. Given sample probes (the lists that sample queries would probe), a local search then moves
lists between shards while that lowers the sample's mean fan-out and keeps the balance.
`random_grouping` is the baseline the benchmark compares with.
"""

from __future__ import annotations

import numpy as np

BALANCE_SLACK = 0.05
REFINE_ROUNDS = 8
FANOUT_ROUNDS = 100


def group_lists(
    centroids: np.ndarray,
    counts: np.ndarray,
    nshards: int,
    seed: int = 1234,
    sample_probes: np.ndarray | None = None,
) -> np.ndarray:
    """list -> shard (int32, length nlist); each shard gets at least one list when nlist >= nshards."""
    nlist = centroids.shape[0]
    if nshards == 1:
        return np.zeros(nlist, dtype=np.int32)
    weights = counts.astype(np.float64) + 1.0  # empty lists still occupy a slot somewhere
    centres = _weighted_kmeans(centroids, weights, nshards, seed)
    capacity = weights.sum() / nshards * (1.0 + BALANCE_SLACK)
    assignment = np.zeros(nlist, dtype=np.int32)
    for _ in range(REFINE_ROUNDS):
        assignment = _assign_with_capacity(centroids, weights, centres, capacity)
        for shard in range(nshards):
            members = assignment == shard
            centres[shard] = np.average(centroids[members], axis=0, weights=weights[members])
    if sample_probes is not None:
        assignment = lower_fanout(sample_probes, weights, assignment, nshards)
    return assignment


def lower_fanout(probes: np.ndarray, weights: np.ndarray, assignment: np.ndarray, nshards: int) -> np.ndarray:
    """Move lists between shards while the mean fan-out of `probes` drops and each shard stays within
    BALANCE_SLACK of its share. The gain of moving list L from shard a to b is the number of sample
    queries for which L is their only list on a, minus those that have no list on b yet."""
    nlist = assignment.size
    share = weights.sum() / nshards
    ceiling, floor = share * (1 + BALANCE_SLACK), share * (1 - BALANCE_SLACK)
    assignment = assignment.copy()
    load = np.bincount(assignment, weights=weights, minlength=nshards)
    everyone = np.arange(nlist)
    for _ in range(FANOUT_ROUNDS):
        alone, absent = reach_changes(probes, assignment, nshards)
        gain = alone[everyone, assignment][:, None] - absent
        gain[everyone, assignment] = -np.inf
        target = gain.argmax(axis=1)
        best = gain[everyone, target]
        moved = 0
        # Gains go stale as lists move, so each round moves only a few of the best candidates.
        for item in np.argsort(-best, kind="stable")[: max(1, nlist // 20)]:
            source, dest = assignment[item], target[item]
            if best[item] <= 0:
                break
            if load[dest] + weights[item] <= ceiling and load[source] - weights[item] >= floor:
                assignment[item] = dest
                load[source] -= weights[item]
                load[dest] += weights[item]
                moved += 1
        if not moved:
            break
    return assignment


def reach_changes(probes: np.ndarray, assignment: np.ndarray, nshards: int) -> tuple[np.ndarray, np.ndarray]:
    """(nlist, nshards) each, over the sample queries probing each list: those for which it is their
    only list on a shard (they stop reaching that shard if it leaves), and those with no list on a
    shard (they start reaching that shard if it joins)."""
    owner = assignment[probes]
    per_shard = np.stack([(owner == shard).sum(axis=1) for shard in range(nshards)], axis=1)
    flat, repeat = probes.ravel(), probes.shape[1]
    alone = _per_list(flat, (per_shard == 1).repeat(repeat, axis=0), assignment.size)
    absent = _per_list(flat, (per_shard == 0).repeat(repeat, axis=0), assignment.size)
    return alone, absent


def _per_list(flat_probes: np.ndarray, per_query_shard: np.ndarray, nlist: int) -> np.ndarray:
    """(nlist, nshards): for each list, summed over the sample queries probing it, a per-shard flag."""
    columns = [
        np.bincount(flat_probes, weights=per_query_shard[:, s], minlength=nlist)
        for s in range(per_query_shard.shape[1])
    ]
    return np.stack(columns, axis=1)


def random_grouping(nlist: int, nshards: int, seed: int = 1234) -> np.ndarray:
    """Lists dealt to shards in a random order: the no-locality baseline."""
    order = np.random.default_rng(seed).permutation(nlist)
    assignment = np.empty(nlist, dtype=np.int32)
    assignment[order] = np.arange(nlist) % nshards
    return assignment


def shards_reached(probes: np.ndarray, list_shard: np.ndarray) -> np.ndarray:
    """(nq, nshards) bool: which shards own a list of each query (row of probed list ids, -1 for none)."""
    nshards = int(list_shard.max()) + 1 if list_shard.size else 1
    reached = np.zeros((probes.shape[0], nshards + 1), dtype=bool)  # the last column: no probe
    owner = np.where(probes >= 0, list_shard[np.maximum(probes, 0)], nshards)
    reached[np.arange(probes.shape[0])[:, None], owner] = True
    return reached[:, :nshards]


def shards_touched(probes: np.ndarray, list_shard: np.ndarray) -> np.ndarray:
    """For each query (row of probed list ids, -1 for none), how many distinct shards own its lists."""
    return shards_reached(probes, list_shard).sum(axis=1)


def _weighted_kmeans(points: np.ndarray, weights: np.ndarray, k: int, seed: int) -> np.ndarray:
    import faiss

    kmeans = faiss.Kmeans(points.shape[1], k, niter=25, seed=seed, min_points_per_centroid=1)
    kmeans.train(np.ascontiguousarray(points, dtype=np.float32), weights=weights.astype(np.float32))
    return np.array(kmeans.centroids, dtype=np.float64)


def _assign_with_capacity(
    points: np.ndarray, weights: np.ndarray, centres: np.ndarray, capacity: float
) -> np.ndarray:
    """Largest lists first, each to the nearest group with room; a list too big for any goes to the
    emptiest group. Every group is seeded with its nearest list so that none stays empty."""
    k = centres.shape[0]
    dist = (points**2).sum(axis=1)[:, None] - 2.0 * points @ centres.T + (centres**2).sum(axis=1)[None, :]
    assignment = np.full(points.shape[0], -1, dtype=np.int32)
    load = np.zeros(k)
    for group in range(k):
        free = np.flatnonzero(assignment < 0)
        seed_list = free[np.argmin(dist[free, group])]
        assignment[seed_list] = group
        load[group] += weights[seed_list]
    for item in np.argsort(-weights, kind="stable"):
        if assignment[item] >= 0:
            continue
        for group in np.argsort(dist[item]):
            if load[group] + weights[item] <= capacity:
                break
        else:
            group = int(np.argmin(load))
        assignment[item] = group
        load[group] += weights[item]
    return assignment
