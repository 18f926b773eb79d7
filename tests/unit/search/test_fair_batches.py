"""FairBatches, the service's batch former, over generated request mixes: every query is searched once
and in order, no batch exceeds its room, and a small request never waits behind a large one."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcrag.search.service import FairBatches, _Pending

ROOM = 16


def pending(rows: int, k: int = 10, nprobe: int = 1) -> _Pending:
    return _Pending(np.arange(rows, dtype=np.float32)[:, None], k, nprobe)


def drain(batches: FairBatches, room: int) -> list[list[tuple[_Pending, int, int]]]:
    taken = []
    while len(batches):
        taken.append(batches.take(room))
    return taken


@settings(max_examples=200, deadline=2000)
@given(
    requests=st.lists(
        st.tuples(st.integers(1, 100), st.sampled_from([(10, 1), (5, 2)])), min_size=1, max_size=12
    ),
    room=st.integers(1, 40),
)
def test_every_row_once_in_order_within_the_room(requests: list, room: int) -> None:
    batches = FairBatches()
    made = [pending(rows, *key) for rows, key in requests]
    for item in made:
        batches.add(item)
    seen = {id(p): [] for p in made}
    for batch in drain(batches, room):
        assert batch, "a batch with nothing in it while requests wait"
        assert sum(end - start for _, start, end in batch) <= room
        assert len({(p.k, p.nprobe) for p, _, _ in batch}) == 1, "one batch mixes k or nprobe"
        assert len({id(p) for p, _, _ in batch}) == len(batch), "a request twice in one batch"
        for item, start, end in batch:
            seen[id(item)].append((start, end))
    for item in made:
        spans = seen[id(item)]
        assert spans[0][0] == 0 and spans[-1][1] == len(item.queries)
        assert all(a[1] == b[0] for a, b in pairwise(spans)), "rows skipped or repeated"


@settings(max_examples=200, deadline=2000)
@given(big=st.lists(st.integers(ROOM, 5000), min_size=1, max_size=4), ahead=st.integers(0, 3))
def test_a_one_query_request_waits_at_most_one_batch_per_request_ahead(big: list[int], ahead: int) -> None:
    batches = FairBatches()
    for rows in big:
        batches.add(pending(rows))
    for _ in range(ahead):  # the large ones are already under way
        batches.take(ROOM)
    small = pending(1)
    batches.add(small)
    waited = 1
    while not any(item is small for item, _, _ in batches.take(ROOM)):
        waited += 1
    assert waited <= 2, f"one query waited {waited} batches behind {big}"


def test_cancelled_and_abandoned_requests_are_skipped() -> None:
    batches = FairBatches()
    cancelled, abandoned, live = pending(3), pending(40), pending(2)
    cancelled.future.cancel()
    for item in (cancelled, abandoned, live):
        batches.add(item)
    first = batches.take(ROOM)
    assert {id(p) for p, _, _ in first} == {id(abandoned), id(live)}
    abandoned.abandoned = True
    assert batches.take(ROOM) == [] and len(batches) == 0


KINDS = [(10, 1), (5, 2), (10, 4)]


@settings(max_examples=300, deadline=2000)
@given(
    line=st.lists(st.tuples(st.integers(1, 5000), st.sampled_from(KINDS)), min_size=0, max_size=10),
    under_way=st.integers(0, 5),
    later=st.lists(st.tuples(st.integers(1, 5000), st.sampled_from(KINDS)), max_size=6),
    kind=st.sampled_from(KINDS),
    room=st.integers(1, 40),
)
def test_with_mixed_kinds_a_request_waits_at_most_one_batch_per_request_ahead(
    line: list, under_way: int, later: list, kind: tuple[int, int], room: int
) -> None:
    """The bound the module docstring states: at most n + 1 batches with n requests ahead, whatever
    their sizes and (k, nprobe), even while more requests keep arriving behind it."""
    batches = FairBatches()
    for rows, key in line:
        batches.add(pending(rows, *key))
    for _ in range(under_way):
        batches.take(room)
    ahead = len(batches)
    small = pending(1, *kind)
    batches.add(small)
    arrivals = [pending(rows, *key) for rows, key in later]
    waited = 0
    while True:
        waited += 1
        batch = batches.take(room)
        assert batch, "the line is not empty but no batch formed"
        if any(item is small for item, _, _ in batch):
            break
        if arrivals:
            batches.add(arrivals.pop())
    assert waited <= ahead + 1, f"waited {waited} batches with {ahead} requests ahead"


@settings(max_examples=200, deadline=2000)
@given(sizes=st.lists(st.integers(1, 5000), max_size=ROOM - 1), kind=st.sampled_from(KINDS))
def test_among_requests_of_one_kind_a_one_query_request_is_in_the_next_batch(
    sizes: list[int], kind: tuple[int, int]
) -> None:
    batches = FairBatches()
    for rows in sizes:
        batches.add(pending(rows, *kind))
    small = pending(1, *kind)
    batches.add(small)
    assert any(item is small for item, _, _ in batches.take(ROOM))
