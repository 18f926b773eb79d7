"""The index on disk: a round trip keeps everything; damage and wrong versions are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hpcrag.search import DistributedIndex, layout
from hpcrag.search.compact import compact_index
from hpcrag.search.layout import IndexFormatError
from hpcrag.search.synthetic import clustered
from tests.search_helpers import build_small

BASE, QUERIES = clustered(1500, 20, 16, clusters=6, seed=4)


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return build_small(tmp_path, BASE, nlist=12, nshards=3)


def test_round_trip_keeps_vectors_ids_and_manifest(index_dir: Path) -> None:
    manifest = layout.read_manifest(index_dir)
    assert (manifest.format, manifest.format_version) == (layout.FORMAT, layout.FORMAT_VERSION)
    assert (manifest.ntotal, manifest.dim, manifest.nlist, manifest.nshards) == (1500, 16, 12, 3)
    assert sum(manifest.list_counts) == 1500 and sum(s.ntotal for s in manifest.shards) == 1500
    all_ids, all_rows = [], []
    for shard in manifest.shards:
        folder = layout.shard_dir(index_dir, shard.shard)
        ids = np.load(folder / "ids.npy")
        offsets = np.load(folder / "list_offsets.npy")
        owned = [lst for lst in range(12) if manifest.list_shard[lst] == shard.shard]
        assert all(offsets[lst + 1] - offsets[lst] == manifest.list_counts[lst] for lst in owned)
        all_ids.append(ids)
        all_rows.append(np.load(folder / "vectors.npy"))
    ids, rows = np.concatenate(all_ids), np.concatenate(all_rows)
    assert sorted(ids.tolist()) == list(range(1500))
    np.testing.assert_array_equal(rows[np.argsort(ids)], BASE)
    assert not list(index_dir.parent.glob(".index.building-*"))


def _shard_file(index_dir: Path) -> Path:
    return layout.shard_dir(index_dir, 1) / "vectors.npy"


def test_truncated_shard_is_refused_even_without_checksums(index_dir: Path) -> None:
    target = _shard_file(index_dir)
    target.write_bytes(target.read_bytes()[:-64])
    for verify in (True, False):
        with pytest.raises(IndexFormatError, match=r"shard-0001/vectors.npy is damaged: \d+ bytes"):
            DistributedIndex.open(index_dir, verify=verify)


def test_altered_shard_is_refused_by_its_checksum(index_dir: Path) -> None:
    target = _shard_file(index_dir)
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=r"shard-0001/vectors.npy is damaged: its checksum differs"):
        DistributedIndex.open(index_dir)


def test_missing_shard_file_and_manifest_are_named(index_dir: Path) -> None:
    (layout.shard_dir(index_dir, 2) / "ids.npy").unlink()
    with pytest.raises(IndexFormatError, match=r"shard-0002/ids.npy is missing"):
        DistributedIndex.open(index_dir)
    (index_dir / layout.MANIFEST).unlink()
    with pytest.raises(IndexFormatError, match=r"manifest\.json is missing"):
        DistributedIndex.open(index_dir)


def test_other_format_versions_are_refused_and_version_1_is_read(index_dir: Path) -> None:
    path = index_dir / layout.MANIFEST
    data = json.loads(path.read_text())
    newer = "it was written by a newer hpcrag: upgrade hpcrag"
    for version, advice in ((99, newer), (0, "rebuild the index"), (True, "rebuild the index")):
        path.write_text(json.dumps({**data, "format_version": version}))
        with pytest.raises(IndexFormatError) as info:
            DistributedIndex.open(index_dir)
        expected = f"format version {version}, this hpcrag reads versions 1, 2, 3, 4; {advice}"
        assert str(info.value).endswith(expected)
    # Version 1 had no local kind: its shards are ivf-flat lists.
    version_1 = {name: value for name, value in data.items() if name != "local"}
    path.write_text(json.dumps({**version_1, "format_version": 1}))
    opened = DistributedIndex.open(index_dir)
    assert (opened.kind, opened.manifest.format_version) == ("ivf-flat", 1)
    assert opened.search(np.ones((1, opened.dim), np.float32), k=3, nprobe=2).ids.shape == (1, 3)
    opened.close()
    compact_index(index_dir)  # rewrites the manifest in the current version
    assert layout.read_manifest(index_dir).format_version == layout.FORMAT_VERSION == 2


def test_garbled_manifest_is_refused(index_dir: Path) -> None:
    (index_dir / layout.MANIFEST).write_text("{not json")
    with pytest.raises(IndexFormatError, match="unreadable manifest"):
        DistributedIndex.open(index_dir)
