"""The worker heartbeat record: validation and its codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resultlog.errors import ValidationError
from resultlog.producers.emitter import Emitter
from resultlog.producers.heartbeats import send_heartbeat, send_heartbeat_sync
from resultlog.producers.sync import SyncEmitter
from resultlog.schemas.codec import Codec
from resultlog.schemas.workers import WorkerHeartbeat
from resultlog.settings import Settings

codec = Codec()


def beat(**changes: object) -> WorkerHeartbeat:
    values: dict[str, object] = dict(
        ttl_s=30, source="celery", hostname="h", pid=1, queue="q", concurrency=2,
        started_at=1_700_000_000_000)
    values.update(changes)
    return WorkerHeartbeat.create("w-1", **values)  # type: ignore[arg-type]


@given(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(0, 2**31 - 1), st.booleans(),
       st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3))
def test_round_trips_through_the_codec(processed: int, failed: int, active: int, running: bool,
                                       meta: dict[str, str]) -> None:
    hb = beat(tasks_processed=processed, tasks_failed=failed, active_tasks=active,
              is_running=running, meta=meta)
    assert WorkerHeartbeat.decode(codec, hb.encode(codec)) == hb


def test_a_later_beat_orders_after_an_earlier_one() -> None:
    assert beat(beat_at=2_000).token > beat(beat_at=1_999).token


@pytest.mark.parametrize("changes", [
    {"ttl_s": 0}, {"pid": -1}, {"source": ""}, {"concurrency": True}, {"tasks_processed": 2**64},
    # Past the timestamps PostgreSQL holds (it stopped the processor at every start).
    {"started_at": 10**15}, {"beat_at": 2**63 - 1},
])
def test_bad_values_are_refused_naming_the_field(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        beat(**changes)


def test_an_empty_worker_id_is_refused() -> None:
    with pytest.raises(ValidationError, match="worker_id"):
        WorkerHeartbeat.create("", ttl_s=30, source="c", hostname="h", pid=1, queue="q",
                               concurrency=1, started_at=0)


@pytest.mark.parametrize("bad", [None, {"worker_id": "w-1"}, "w-1"])
async def test_sending_what_is_no_heartbeat_is_a_validation_error(bad: object) -> None:
    """As emit() refuses what is no TaskEvent (it was a plain TypeError); nothing starts."""
    sync = SyncEmitter(Settings())
    try:
        with pytest.raises(ValidationError, match="expected a WorkerHeartbeat, got "):
            await send_heartbeat(Emitter(Settings()), bad)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="expected a WorkerHeartbeat, got "):
            send_heartbeat_sync(sync, bad)  # type: ignore[arg-type]
    finally:
        sync.close()

