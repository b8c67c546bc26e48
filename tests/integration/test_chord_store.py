"""The chord view's writes: a completion is final, whatever progress lands after it."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from resultlog import names
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
