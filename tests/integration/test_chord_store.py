"""The chord view's writes: a completion is final, whatever progress lands after it."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis.exceptions
from redis.asyncio import Redis

from resultlog import names
from resultlog.chords.fire import BodyFirer
from resultlog.errors import StoreUnavailable
from resultlog.chords.records import ChordCompleted, completion_event_id
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.chords.records import ChordProgress
from resultlog.chords.store import ChordStore

pytestmark = pytest.mark.integration

T0 = (int(time.time()) - 3600) * 1000  # recent: expiry derives from it


async def test_progress_flushed_after_the_completion_changes_nothing(settings: Settings) -> None:
    client = Redis.from_url(settings.redis_url)
    key = names.chord_key(settings.redis_prefix, "c1")
    try:
        store = ChordStore(settings, client)
        await store.progress({"c1": ChordProgress(3, 1, 0, T0 + 1)})
        await store.progress({"c1": ChordProgress(3, 2, 0, T0 + 5)})
        await store.progress({"c1": ChordProgress(3, 1, 0, T0 + 1)})  # stale: moves nothing back
        assert await client.hget(key, "done") == b"2"
        assert await client.execute_command("PEXPIRETIME", key) == T0 + 5 + settings.result_ttl_s * 1000

        await store.complete(ChordCompleted(completion_event_id("c1"), "c1", State.SUCCESS, 3, 3, 0,
                                            T0 + 9, results="[1,2,3]"))
        before = (await client.hgetall(key), await client.execute_command("PEXPIRETIME", key))
        await store.progress({"c1": ChordProgress(3, 2, 0, T0 + 5)})  # a flush that was in flight
        after = (await client.hgetall(key), await client.execute_command("PEXPIRETIME", key))
        assert after == before
        assert before[0][b"state"] == b"SUCCESS" and before[1] == T0 + 9 + settings.result_ttl_s * 1000
    finally:
        await client.aclose()


class _CountingFirer(BodyFirer):
    """Counts the bodies it would send (the sending itself is Celery's: test_celery_chords)."""

    sent = 0

    def fire_sync(self, completion: ChordCompleted, body: str, parent: str | None = None) -> None:
        self.sent += 1


class _DoneMarkLostOnce(Redis):
    """Redis refusing the first "done" mark (unavailable right after the body was sent)."""

    refused = 0

    async def set(self, name: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        if value == b"done" and not self.refused:
            self.refused += 1
            raise redis.exceptions.ConnectionError("Redis went away (made by the test)")
        return await super().set(name, value, *args, **kwargs)


async def test_a_body_sent_whose_done_mark_failed_is_not_sent_again(settings: Settings) -> None:
    """The aggregator retries fire() while Redis is unavailable; a retry after the body
    went out and the "done" mark failed found the processor's own "firing" mark and sent
    the body a second time (a fault audit's reading of fire.py)."""
    client = _DoneMarkLostOnce.from_url(settings.redis_url)
    firer = _CountingFirer(settings, app=None)
    completion = ChordCompleted(completion_event_id("fired"), "fired", State.SUCCESS, 1, 1, 0,
                                T0, results="[1]")
    try:
        with pytest.raises(StoreUnavailable):
            await firer.fire(client, completion, "{}")
        await firer.fire(client, completion, "{}")  # what the aggregator's retry does
        assert (firer.sent, client.refused) == (1, 1)
        assert await client.get(names.chord_fire_key(settings.redis_prefix, completion.event_id)) == b"done"
        await firer.fire(client, completion, "{}")  # delivered again later: already fired
        assert firer.sent == 1
    finally:
        await client.aclose()
