"""Offline compaction: fold the update log into new shards, and say whether a rebuild would help.

The index is opened as one process (every logged update replayed), each shard's live rows (base
rows not deleted, and the rows added since) are written as a new generation beside the index, which
is swapped in by renames like a build (`build.publish`): a reader sees the old index or the new,
and a failed compaction leaves the old one as it was. The new manifest's `base_seq` is the last
update folded in, so the log starts empty from there.

Shards whose local kind keeps an index of its own (hnsw, ivf-pq) get it rebuilt over their new
rows; ivf-pq reuses the codebooks trained at build. When the build replicated boundary vectors
(`--replicate`), the copies of surviving rows are kept, those an update made for its rows too, and
rows their update did not judge (logged by an hpcrag that made copies only here) get theirs by the
build's rule and threshold.

It is offline: it refuses while any process has the index open (a search service, a job), since
those hold the old generation's files and would not see the swap. Updates are held off for its
duration by the writer lock.

Drift: updates go to their nearest list under centroids trained on the original vectors. When much
of the index was added since (over `ADDED_SHARE_ADVISE`), or its vectors now sit farther from their
centroids than at training (mean squared distance over `ERROR_RATIO_ADVISE` times the build's), new
centroids would fit better: the report advises `hpcrag index build` again.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hpcrag.errors import HpcragError
from hpcrag.search import layout
from hpcrag.search.arrays import to_numpy
from hpcrag.search.build import Progress, publish, shard_record, squared_error, write_shard
from hpcrag.search.index import DistributedIndex
from hpcrag.search.local_kinds import LIVE_KINDS, rebuild_template
from hpcrag.search.replication import second_lists
from hpcrag.search.wal import UpdateLog, served_elsewhere
from hpcrag.util.workdirs import WorkFolder, make_workdir, sigterm_held, stopped_by_sigterm

ADDED_SHARE_ADVISE = 0.2
ERROR_RATIO_ADVISE = 1.2


@dataclass(frozen=True)
class Drift:
    added_share: float  # live vectors added since the centroids were trained, over all live vectors
    error_ratio: float | None  # mean squared distance to centroids now / at training (None: unknown)
    rebuild_advised: bool
    reason: str


@dataclass(frozen=True)
class CompactReport:
    seq: int  # the last update folded in
    vectors: int  # live vectors after compaction
    rows_dropped: int  # deleted and replaced rows removed from the shards (second copies not counted)
    rows_folded: int  # rows added by updates, now part of the shards (second copies not counted)
    drift: Drift
    seconds: float


def compact_index(root: Path | str, progress: Progress | None = None) -> CompactReport:
    """Fold every logged update of the index in `root` into new shards (one process, offline)."""
    root = Path(root)
    say = progress or (lambda message: None)
    manifest = layout.read_manifest(root)
    kind = manifest.local.get("kind", "ivf-flat")
    if kind not in LIVE_KINDS:
        raise HpcragError(
            f"the index in {root} has {kind} shards, which take no updates: there is nothing to compact "
            "(rebuild it to change its vectors)"
        )
    if served_elsewhere(root):
        raise HpcragError(
            f"the index in {root} is open in another process (a search service or a job); compaction "
            "is offline: stop those first (updates they acknowledged are in the log and are kept)"
        )
    started = time.monotonic()
    log = UpdateLog(root, manifest.base_seq)
    with log.writing():
        if served_elsewhere(root):  # again, now that no writer can start: it may have opened meanwhile
            raise HpcragError(f"the index in {root} was opened by another process; compaction stopped")
        index = DistributedIndex.open(root)
        try:
            say(f"folding updates up to #{index.seq} into {manifest.nshards} shards")
            with stopped_by_sigterm(f"the compaction of {root}"):
                report, folder = _write_generation(root, index, manifest, say)
        finally:
            index.close()
        try:
            with sigterm_held():  # the index is not lost to a signal between two renames
                publish(folder.path, root, overwrite=True)
        finally:
            folder.release()  # a publish that failed leaves the new generation in the folder
    return replace(report, seconds=round(time.monotonic() - started, 3))


def _write_generation(
    root: Path, index: DistributedIndex, manifest: layout.Manifest, say: Progress
) -> tuple[CompactReport, WorkFolder]:
    folder = make_workdir(root, "compacting", say, layout.MANIFEST)
    workdir = folder.path
    try:
        centroids = np.load(root / layout.CENTROIDS)
        columns = len(index.schema.columns)
        record = shard_record(manifest.dtype, manifest.dim, columns)
        shards, counts = [], np.zeros(manifest.nlist, dtype=np.int64)
        template = rebuild_template(manifest.local, index.segments(0)[0].local)
        dropped = folded = added_live = 0
        error = 0.0
        per_shard: list[list[np.ndarray]] = []
        added: list[np.ndarray] = []
        for shard in range(manifest.nshards):
            rows = []
            for segment in index.segments(shard):
                keep = np.arange(segment.rows) if segment.live is None else np.flatnonzero(segment.live)
                # Counted in vectors: a second copy is not a vector of its own.
                first = np.ones(segment.rows, bool) if segment.replica is None else segment.replica == 0
                dropped += int(first.sum()) - int(first[keep].sum())
                part = np.empty(keep.size, dtype=record)
                part["list"] = segment.list_of_rows()[keep]
                part["id"] = np.asarray(to_numpy(segment.ids))[keep]
                part["vector"] = np.asarray(to_numpy(segment.vectors))[keep]
                part["attributes"] = segment.attributes[keep]
                part["replica"] = 0 if segment.replica is None else segment.replica[keep]
                if segment.delta:
                    folded += int(first.sum())
                    added_live += int(first[keep].sum())
                    added.append(part)
                rows.append(part)
            per_shard.append(rows)
        for shard, copies in _copies_of_added(added, index).items():
            per_shard[shard].append(copies)
        replicas = 0
        for shard, rows in enumerate(per_shard):
            mine = np.concatenate(rows)
            replicas += int(mine["replica"].sum())
            counts += np.bincount(mine["list"], minlength=manifest.nlist)
            first = mine[mine["replica"] == 0]  # a second copy sits farther from its list by design
            error += squared_error(first["vector"], centroids, first["list"])
            written = write_shard(
                workdir, shard, mine, manifest.nlist, manifest.local, index.metric, template
            )
            shards.append(written)
        total = int(counts.sum()) - replicas
        trained = manifest.build.get("trained_vectors", manifest.ntotal)
        since_training = manifest.build.get("added_since_training", 0) + added_live
        drift = _drift(since_training / max(total, 1), error / max(total, 1), manifest.build)
        new = replace(
            manifest,
            ntotal=total,
            list_counts=[int(c) for c in counts],
            centroids=layout.save_array(workdir / layout.CENTROIDS, centroids),
            shards=shards,
            attributes=index.schema.to_json(),
            base_seq=index.seq,
            replicas=replicas,
            format_version=layout.format_version_for(replicas),
            build={
                **manifest.build,
                "trained_vectors": trained,
                "added_since_training": since_training,
                "compacted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        layout.write_manifest(workdir, new)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        folder.release()
        raise
    report = CompactReport(
        seq=index.seq, vectors=total, rows_dropped=dropped, rows_folded=folded, drift=drift, seconds=0.0
    )
    return report, folder


def _copies_of_added(added: list[np.ndarray], index: DistributedIndex) -> dict[int, np.ndarray]:
    """Second copies, by the build's rule (`replication.py`), of the rows added since the build that
    their update did not judge (logged by an hpcrag that copied rows only at compact), by the shard
    that receives them. None when the build replicated nothing."""
    if index.copy_threshold <= 0 or not added or not index.logged_without_copies:
        return {}
    rows = np.concatenate(added)
    judged = np.fromiter(index.logged_without_copies, dtype=np.int64, count=len(index.logged_without_copies))
    rows = rows[(rows["replica"] == 0) & np.isin(rows["id"], judged)]
    second = second_lists(index.router, rows["vector"].astype(np.float32), rows["list"], index.copy_threshold)
    copies = rows[second >= 0]
    copies["list"], copies["replica"] = second[second >= 0], 1
    owner = index.router.list_shard[copies["list"]]
    return {int(shard): copies[owner == shard] for shard in np.unique(owner)}


def _drift(added_share: float, error_now: float, build: dict) -> Drift:
    at_training = build.get("quantization_error")
    ratio = error_now / at_training if at_training else None
    reasons = []
    if added_share > ADDED_SHARE_ADVISE:
        reasons.append(f"{added_share:.0%} of the vectors were added after the centroids were trained")
    if ratio is not None and ratio > ERROR_RATIO_ADVISE:
        reasons.append(f"vectors sit {ratio:.2f}x farther (squared) from their centroids than at training")
    if reasons:
        reason = "; ".join(reasons) + ": rebuild the index (hpcrag index build) for new centroids"
    else:
        reason = "the centroids still fit the vectors; no rebuild needed"
    return Drift(added_share, ratio, bool(reasons), reason)
