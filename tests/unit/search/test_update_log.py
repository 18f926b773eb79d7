"""The update log on its own: records round-trip with gapless seqs; a torn or zero-filled tail is
dropped (and cut by the next writer); damage with intact records after it is refused by file and byte.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from hpcrag.search import DistributedIndex
from hpcrag.search.layout import IndexFormatError
from hpcrag.search.synthetic import clustered
from hpcrag.search.wal import LOG, Update, UpdateLog, encode_record, served_elsewhere
from tests.search_helpers import build_small

BASE, QUERIES = clustered(400, 5, 8, clusters=4, seed=21)


def put(first_id: int, rows: int = 3, columns: dict[str, str] | None = None) -> Update:
    """A put record whose arrays are all derived from `first_id`, so that a read can be checked."""
    ids = np.arange(first_id, first_id + rows, dtype=np.int64)
    return Update(
        "put",
        ids=ids,
        lists=ids % 4,
        vectors=np.arange(rows * 8, dtype=np.float32).reshape(rows, 8) + first_id,
        attributes=np.stack([ids * 10, ids * 100], axis=1),
        columns=columns,
    )


def delete(*ids: int) -> Update:
    return Update("delete", ids=np.array(ids, dtype=np.int64))


def write(root: Path, updates: list[Update], base_seq: int = 0) -> list[int]:
    """Append `updates` through one writer; the size of the log after each."""
    log = UpdateLog(root, base_seq)
    sizes = []
    with log.writing() as unseen:
        assert unseen == []
        for update in updates:
            log.append(update)
            sizes.append((root / LOG).stat().st_size)
    return sizes


def assert_same_update(found: Update, expected: Update, seq: int) -> None:
    assert (found.kind, found.seq, found.columns) == (expected.kind, seq, expected.columns)
    for name in ("ids", "lists", "vectors", "attributes"):
        value, wanted = getattr(found, name), getattr(expected, name)
        if wanted is None:
            assert value is None, name
        else:
            assert value.dtype == wanted.dtype, name
            np.testing.assert_array_equal(value, wanted)


def file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


# --- round trip ---------------------------------------------------------------------------------


def test_round_trip_of_puts_deletes_attributes_and_columns(tmp_path: Path) -> None:
    updates = [put(10, columns={"n": "int", "source": "str"}), delete(10, 11), put(20, rows=1)]
    write(tmp_path, updates)
    reader = UpdateLog(tmp_path, 0)
    found = reader.read_new()
    assert len(found) == 3
    for seq, (got, expected) in enumerate(zip(found, updates, strict=True), start=1):
        assert_same_update(got, expected, seq)
    assert reader.last_seq == 3 and reader.offset == (tmp_path / LOG).stat().st_size
    assert reader.read_new() == [] and not reader.has_new()


def test_seq_numbers_continue_from_the_base_and_across_writers(tmp_path: Path) -> None:
    first = UpdateLog(tmp_path, 7)
    with first.writing():
        assert [first.append(delete(1)), first.append(delete(2))] == [8, 9]
    second = UpdateLog(tmp_path, 7)
    with second.writing() as unseen:
        assert [u.seq for u in unseen] == [8, 9]
        assert second.append(delete(3)) == 10
    assert [u.seq for u in UpdateLog(tmp_path, 7).read_new()] == [8, 9, 10]


def test_a_missing_log_reads_as_empty(tmp_path: Path) -> None:
    log = UpdateLog(tmp_path, 0)
    assert log.read_new() == [] and not log.has_new() and log.last_seq == 0


def test_has_new_after_another_instance_appends(tmp_path: Path) -> None:
    reader, writer = UpdateLog(tmp_path, 0), UpdateLog(tmp_path, 0)
    assert not reader.has_new()
    with writer.writing():
        writer.append(delete(5))
    assert reader.has_new()
    assert [u.seq for u in reader.read_new()] == [1]
    assert not reader.has_new()


# --- torn tails ---------------------------------------------------------------------------------


def test_a_torn_tail_is_not_read_and_the_next_writer_cuts_it(tmp_path: Path) -> None:
    sizes = write(tmp_path, [put(0), delete(1)])
    torn = encode_record(put(50), 3)
    with open(tmp_path / LOG, "ab") as handle:
        handle.write(torn[: len(torn) // 2])
    reader = UpdateLog(tmp_path, 0)
    assert [u.seq for u in reader.read_new()] == [1, 2]
    assert reader.offset == sizes[-1]
    assert reader.has_new(), "the torn bytes are still there until a writer cuts them"

    writer = UpdateLog(tmp_path, 0)
    with writer.writing() as unseen:
        assert [u.seq for u in unseen] == [1, 2]
        assert (tmp_path / LOG).stat().st_size == sizes[-1]
        assert writer.append(delete(2)) == 3
    found = UpdateLog(tmp_path, 0).read_new()
    assert [(u.kind, u.seq, u.ids.tolist()) for u in found][-1] == ("delete", 3, [2])
    assert len(found) == 3
    assert [u.seq for u in reader.read_new()] == [3]


@pytest.mark.parametrize("cut", [1, 10, 23, 24, 40])
def test_a_tail_cut_anywhere_is_torn(tmp_path: Path, cut: int) -> None:
    write(tmp_path, [delete(1)])
    with open(tmp_path / LOG, "ab") as handle:
        handle.write(encode_record(put(3), 2)[:cut])
    assert [u.seq for u in UpdateLog(tmp_path, 0).read_new()] == [1]


def test_reopening_an_index_shows_exactly_the_complete_records(tmp_path: Path) -> None:
    root = build_small(tmp_path, BASE, nlist=4, nshards=2, metric="l2")
    index = DistributedIndex.open(root)
    rng = np.random.default_rng(0)
    index.add(rng.normal(size=(5, 8)).astype(np.float32), np.arange(1000, 1005))
    index.delete([0, 1, 2])
    index.close()
    torn = put(2000, rows=2)
    with open(root / LOG, "ab") as handle:
        handle.write(encode_record(torn, 3)[:-5])

    reopened = DistributedIndex.open(root)
    assert (reopened.seq, reopened.ntotal) == (2, len(BASE) + 5 - 3)
    result = reopened.delete([2000, 2001, 1000])
    assert result.unknown_ids == (2000, 2001) and result.deleted == 1 and result.seq == 3
    found = UpdateLog(root, 0).read_new()
    assert [(u.kind, u.seq) for u in found] == [("put", 1), ("delete", 2), ("delete", 3)]
    assert found[-1].ids.tolist() == [1000], "the torn record was cut, the new one follows the complete"
    reopened.close()


def test_a_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    sizes = write(tmp_path, [put(0), delete(1)])
    with open(tmp_path / LOG, "ab") as handle:
        handle.write(bytes(4096 + 7))
    reader = UpdateLog(tmp_path, 0)
    assert [u.seq for u in reader.read_new()] == [1, 2]
    writer = UpdateLog(tmp_path, 0)
    with writer.writing():
        assert (tmp_path / LOG).stat().st_size == sizes[-1]
        writer.append(delete(3))
    assert [u.seq for u in UpdateLog(tmp_path, 0).read_new()] == [1, 2, 3]


@pytest.mark.parametrize(("written", "zeros_after"), [(4, 0), (12, 0), (4, 4096), (60, 4096)])
def test_a_partly_written_record_followed_by_zeros_is_torn(
    tmp_path: Path, written: int, zeros_after: int
) -> None:
    write(tmp_path, [put(0), delete(1)])
    record = encode_record(put(7), 3)
    with open(tmp_path / LOG, "ab") as handle:
        handle.write(record[:written] + bytes(len(record) - written + zeros_after))
    assert [u.seq for u in UpdateLog(tmp_path, 0).read_new()] == [1, 2]


# --- damage -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "why"), [(0, "bad record header"), (4, "bad record header"), (60, "checksum")]
)
def test_a_flipped_byte_before_intact_records_is_damage(tmp_path: Path, where: int, why: str) -> None:
    sizes = write(tmp_path, [put(0), put(10), delete(1)])
    data = bytearray((tmp_path / LOG).read_bytes())
    data[sizes[0] + where] ^= 0x10
    (tmp_path / LOG).write_bytes(bytes(data))
    with pytest.raises(
        IndexFormatError, match=rf"{re.escape(str(tmp_path / LOG))} is damaged at byte {sizes[0]} \({why}"
    ):
        UpdateLog(tmp_path, 0).read_new()
    with pytest.raises(IndexFormatError), UpdateLog(tmp_path, 0).writing():
        pass
    assert (tmp_path / LOG).stat().st_size == sizes[-1], "a writer must not cut damage off"


def test_damage_names_its_byte_in_the_file_not_in_the_unread_part(tmp_path: Path) -> None:
    sizes = write(tmp_path, [put(0), put(10)])
    reader = UpdateLog(tmp_path, 0)
    assert len(reader.read_new()) == 2
    more = UpdateLog(tmp_path, 0)
    with more.writing():
        more.append(delete(1))
        more.append(delete(2))
    data = bytearray((tmp_path / LOG).read_bytes())
    data[sizes[-1] + 50] ^= 0x01
    (tmp_path / LOG).write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=rf"damaged at byte {sizes[-1]} "):
        reader.read_new()


def test_a_flipped_length_byte_before_intact_records_is_damage(tmp_path: Path) -> None:
    sizes = write(tmp_path, [put(0), put(10), delete(1)])
    data = bytearray((tmp_path / LOG).read_bytes())
    data[sizes[0] + 12 + 5] ^= 0x01  # a high byte of the second record's payload length
    (tmp_path / LOG).write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=rf"damaged at byte {sizes[0]}"):
        UpdateLog(tmp_path, 0).read_new()


def test_a_flipped_byte_in_the_last_record_is_torn(tmp_path: Path) -> None:
    sizes = write(tmp_path, [put(0), put(10), delete(1)])
    data = bytearray((tmp_path / LOG).read_bytes())
    data[sizes[1] + 30] ^= 0x10
    (tmp_path / LOG).write_bytes(bytes(data))
    assert [u.seq for u in UpdateLog(tmp_path, 0).read_new()] == [1, 2]


def test_a_gap_in_seq_numbers_is_damage(tmp_path: Path) -> None:
    first = encode_record(delete(1), 1)
    (tmp_path / LOG).write_bytes(first + encode_record(delete(2), 3) + encode_record(delete(3), 4))
    with pytest.raises(IndexFormatError, match=rf"damaged at byte {len(first)} \(record 3 follows 1\)"):
        UpdateLog(tmp_path, 0).read_new()


def test_a_record_from_before_the_base_is_damage(tmp_path: Path) -> None:
    (tmp_path / LOG).write_bytes(encode_record(delete(1), 1))
    with pytest.raises(IndexFormatError, match=r"damaged at byte 0 \(record 1 follows 5\)"):
        UpdateLog(tmp_path, 5).read_new()


# --- the serving lock ---------------------------------------------------------------------------


def test_served_elsewhere_while_an_index_is_open(tmp_path: Path) -> None:
    root = build_small(tmp_path, BASE, nlist=4, nshards=2)
    assert not served_elsewhere(root)
    first, second = DistributedIndex.open(root), DistributedIndex.open(root)
    assert served_elsewhere(root)
    first.close()
    assert served_elsewhere(root), "the second index still serves"
    second.close()
    assert not served_elsewhere(root)


def test_a_failed_append_is_an_error_and_leaves_no_partial_record(tmp_path: Path, monkeypatch) -> None:
    import os

    from hpcrag.errors import HpcragError

    sizes = write(tmp_path, [put(0)])
    log = UpdateLog(tmp_path, 0)
    real_fsync = os.fsync

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with log.writing():
        monkeypatch.setattr(os, "fsync", disk_full)
        with pytest.raises(HpcragError, match=r"cannot write the update log .*No space left.*not applied"):
            log.append(put(10))
        monkeypatch.setattr(os, "fsync", real_fsync)
    assert (tmp_path / LOG).stat().st_size == sizes[-1], "the partial record was cut off"
    assert log.last_seq == 1
    with log.writing():
        assert log.append(delete(1)) == 2
    assert [u.seq for u in UpdateLog(tmp_path, 0).read_new()] == [1, 2]
