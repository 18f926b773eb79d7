"""The ledger writer: group commit, and a thread that no row can stop (issue 12, defect 1)."""

from __future__ import annotations

import asyncio
import sqlite3

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcrag.cost.ledger import Ledger, LedgerWriter, RequestRecord, storable_text


def row(request_id: str, **fields: object) -> RequestRecord:
    return RequestRecord(
        request_id=request_id, started_at=1000.0, route="chat", status=400, outcome="invalid", **fields
    )


def test_a_lone_surrogate_does_not_stop_the_writer(tmp_path) -> None:
    ledger = Ledger(tmp_path / "g.sqlite")
    writer = LedgerWriter(ledger)
    writer.record(row("bad", model="\ud800", key="k\udfff"))
    writer.record(row("good", model="tier-s"))
    writer.flush(timeout=5)
    assert writer.alive and writer.rows_dropped == 0
    stored = {r.request_id: r for r in ledger.since(0)}
    assert stored["bad"].model == "\\ud800" and stored["bad"].key == "k\\udfff"
    assert stored["good"].model == "tier-s"


def test_a_row_that_cannot_be_written_is_dropped_alone_and_counted(tmp_path) -> None:
    ledger = Ledger(tmp_path / "g.sqlite")
    writer = LedgerWriter(ledger)
    poisoned = row("poisoned")
    poisoned.prompt_tokens = object()  # type: ignore[assignment]  # no SQLite type takes it
    for item in (row("a"), poisoned, row("b")):
        writer.record(item)
    writer.flush(timeout=5)
    assert writer.alive and writer.rows_dropped == 1 and writer.rows_written == 2
    assert sorted(r.request_id for r in ledger.since(0)) == ["a", "b"]


def test_commit_returns_once_the_row_is_in_and_rows_share_transactions(tmp_path) -> None:
    ledger = Ledger(tmp_path / "g.sqlite")
    writer = LedgerWriter(ledger)

    async def answer_many() -> list[bool]:
        async def one(i: int) -> bool:
            written = await writer.commit(row(f"r{i}"))
            ids = {r.request_id for r in ledger.since(0)}
            assert f"r{i}" in ids  # its own row is readable the moment commit returns
            return written

        return await asyncio.gather(*(one(i) for i in range(200)))

    assert all(asyncio.run(answer_many()))
    assert len(ledger.since(0)) == 200 and writer.rows_written == 200
    with sqlite3.connect(tmp_path / "g.sqlite") as db:
        # Each transaction appends its frames to the WAL: far fewer commits than rows means they grouped.
        (frames,) = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1:2]
    assert frames < 200, f"{frames} WAL frames for 200 rows: no group commit"
    writer.close()
    assert not writer.alive


def test_commit_says_when_a_row_could_not_be_written(tmp_path) -> None:
    ledger = Ledger(tmp_path / "g.sqlite")
    writer = LedgerWriter(ledger)
    poisoned = row("poisoned")
    poisoned.prompt_tokens = object()  # type: ignore[assignment]
    assert asyncio.run(writer.commit(poisoned)) is False
    assert asyncio.run(writer.commit(row("fine"))) is True
    assert writer.rows_dropped == 1


def test_a_lasting_database_error_drops_rows_instead_of_holding_requests(tmp_path) -> None:
    ledger = Ledger(tmp_path / "g.sqlite")
    writer = LedgerWriter(ledger)
    with sqlite3.connect(tmp_path / "g.sqlite") as db:
        db.execute("DROP TABLE requests")
    # Retried, it would wait for ever: wait_for's bound only keeps a regression from hanging the suite.
    assert asyncio.run(asyncio.wait_for(writer.commit(row("lost")), 30)) is False
    assert writer.alive and writer.stalled_s == 0 and writer.rows_dropped == 1


def test_a_long_model_name_is_stored_clipped() -> None:
    assert storable_text("m" * 5_000_000) == "m" * 512 + "…"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.text(alphabet=st.characters(codec=None), max_size=40), min_size=1, max_size=5),
    decision=st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    ),
)
def test_any_text_in_any_field_is_written(tmp_path, texts, decision) -> None:
    ledger = Ledger(tmp_path / "property.sqlite")
    writer = LedgerWriter(ledger)
    before = len(ledger.since(0))
    for text in texts:
        writer.record(row(text, model=text, key=text, endpoint=text, decision={"x": decision}))
    writer.flush(timeout=5)
    assert writer.alive and writer.rows_dropped == 0
    assert len(ledger.since(0)) == before + len(texts)
