"""The chords' marks in PostgreSQL: the hooks' claims (resultlog/chords/hookclaims.py)
and Celery bodies' fire marks (resultlog/chords/bodyfires.py, resultlog/chords/fire.py)."""

from __future__ import annotations

import time

import pytest

from processors.replay import clear_redis_view
from resultlog.chords.bodyfires import BodyFires, FireMark
from resultlog.chords.fire import BodyFirer
from resultlog.chords.hookclaims import HookClaims
from resultlog.chords.marks import ChordMarks
from resultlog.chords.records import ChordCompleted, completion_event_id
from resultlog.errors import StoreUnavailable
from resultlog.schemas.states import State
from resultlog.settings import Settings
from tests.conftest import pg_connection

pytestmark = pytest.mark.integration

T0 = (int(time.time()) - 3600) * 1000


async def test_a_completion_is_claimed_once_and_a_retry_recognizes_its_own_claim(settings: Settings) -> None:
    async with HookClaims(settings) as claims:
        await claims.start()  # again: the schema is current, nothing to do
        assert await claims.claim("e1", "c1", "p1:a", 60) is True
        # The same attempt retried (its answer was lost with the connection): still ours.
        assert await claims.claim("e1", "c1", "p1:a", 60) is True
        # Another attempt, here or in another processor: not ours.
        assert await claims.claim("e1", "c1", "p1:b", 60) is False
        assert await claims.claim("e1", "c1", "p2:a", None) is False
        # Any text, as event ids from another producer may hold.
        assert await claims.claim("e\x00\x01", "c\x00", "p1:c", None) is True
        assert await claims.claim("e\x00\x01", "c\x00", "p1:d", None) is False
        assert await claims.count() == 2


async def test_expired_claims_are_swept_and_the_others_kept(settings: Settings) -> None:
    async with HookClaims(settings) as claims:
        assert await claims.claim("old", "c-old", "p:a", 60)
        assert await claims.claim("kept", "c-kept", "p:a", 60)
        assert await claims.claim("forever", "c-forever", "p:a", None)  # a TTL of 0
        assert await claims.sweep() == 0
        async with pg_connection(settings.postgres_dsn) as conn:
            await conn.execute(
                f'UPDATE "{settings.postgres_schema}".chord_hook_claims'
                " SET expires_at = now() - interval '1 second' WHERE event_id = 'old'")
        assert await claims.sweep() == 1
        assert await claims.count() == 2
        assert await claims.claim("kept", "c-kept", "p:b", 60) is False
        assert await claims.claim("forever", "c-forever", "p:b", 60) is False


@pytest.mark.parametrize("marks", [HookClaims, BodyFires])
async def test_an_unreachable_postgres_is_a_retriable_store_unavailable(
        settings: Settings, marks: type[ChordMarks]) -> None:
    down = settings.replace(postgres_dsn="postgresql://resultlog@127.0.0.1:1/resultlog")
    with pytest.raises(StoreUnavailable) as raised:
        await marks(down).start()
    assert raised.value.retriable


async def test_a_body_is_marked_firing_then_fired(settings: Settings) -> None:
    async with BodyFires(settings) as fires:
        assert await fires.begin("e1", "c1", "p1:a", 60) == FireMark(fired=False)
        # The same attempt retried (its answer was lost with the connection): its own mark.
        assert await fires.begin("e1", "c1", "p1:a", 60) == FireMark(fired=False)
        # Another attempt finds a firing mark nobody said fired: the first died sending.
        assert await fires.begin("e1", "c1", "p2:a", 60) == FireMark(fired=False, interrupted="p1:a")
        await fires.fired("e1")
        await fires.fired("e1")  # idempotent
        assert await fires.begin("e1", "c1", "p3:a", None) == FireMark(fired=True)
        assert await fires.begin("e\x00", "c\x00", "p1:b", None) == FireMark(fired=False)
        async with pg_connection(settings.postgres_dsn) as conn:
            await conn.execute(
                f'UPDATE "{settings.postgres_schema}".chord_body_fires'
                " SET expires_at = now() - interval '1 second' WHERE event_id = 'e1'")
        assert (await fires.sweep(), await fires.count()) == (1, 1)


class _CountingFirer(BodyFirer):
    """Counts the bodies it would send (the sending itself is Celery's: test_celery_chords)."""

    sent = 0

    def fire_sync(self, completion: ChordCompleted, body: str, parent: str | None = None) -> None:
        self.sent += 1


class _FiredMarkLostOnce(BodyFires):
    """PostgreSQL refusing the first fired mark (unavailable right after the body was sent)."""

    refused = 0

    async def fired(self, event_id: str) -> None:
        if not self.refused:
            self.refused += 1
            raise StoreUnavailable("PostgreSQL went away (made by the test)")
        await super().fired(event_id)


def _completion(chord_id: str) -> ChordCompleted:
    return ChordCompleted(completion_event_id(chord_id), chord_id, State.SUCCESS, 1, 1, 0, T0,
                          results="[1]")


async def test_a_body_sent_whose_fired_mark_failed_is_not_sent_again(settings: Settings) -> None:
    """The aggregator retries fire() while the store is unavailable; a retry after the
    body went out and the fired mark failed found the processor's own firing mark and
    sent the body a second time (a fault audit's reading of fire.py)."""
    firer = _CountingFirer(settings, app=None)
    firer.marks = marks = _FiredMarkLostOnce(settings)
    completion = _completion("fired")
    await firer.start()
    try:
        with pytest.raises(StoreUnavailable):
            await firer.fire(completion, "{}")
        await firer.fire(completion, "{}")  # what the aggregator's retry does
        assert (firer.sent, marks.refused) == (1, 1)
        await firer.fire(completion, "{}")  # delivered again later: already fired
        assert firer.sent == 1
        assert await marks.begin(completion.event_id, "fired", "other", None) == FireMark(fired=True)
    finally:
        await firer.close()


async def test_a_body_fired_before_redis_lost_its_data_is_not_fired_again(settings: Settings) -> None:
    """The processor died after sending a body and before its chord's offsets were
    committed (a host restart), and Redis came back empty: the completion, delivered
    again to the restarted processor, sent the body a second time while the fire
    marks were Redis keys."""
    first = _CountingFirer(settings, app=None)
    completion = _completion("redis-lost")
    await first.start()
    try:
        await first.fire(completion, "{}")
    finally:
        await first.close()
    await clear_redis_view(settings)  # what a Redis restarted empty lost (a `replay --fresh` too)
    restarted = _CountingFirer(settings, app=None)
    await restarted.start()
    try:
        await restarted.fire(completion, "{}")
    finally:
        await restarted.close()
    assert (first.sent, restarted.sent) == (1, 0)


async def test_a_body_whose_processor_died_while_firing_it_is_fired_again(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Never a chord left hanging: a firing mark nobody said fired is fired again."""
    completion = _completion("died")
    async with BodyFires(settings) as fires:
        await fires.begin(completion.event_id, "died", "dead-host:1:abc", 60)
    firer = _CountingFirer(settings, app=None)
    await firer.start()
    try:
        await firer.fire(completion, "{}")
        await firer.fire(completion, "{}")
    finally:
        await firer.close()
    assert firer.sent == 1
    assert "a processor died while firing its body (dead-host:1:abc)" in caplog.text
