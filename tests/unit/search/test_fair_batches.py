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
