"""The chord hooks' claims in PostgreSQL (resultlog/chords/hookclaims.py)."""

from __future__ import annotations

import pytest

from resultlog.chords.hookclaims import HookClaims
from resultlog.errors import StoreUnavailable
from resultlog.settings import Settings
from tests.conftest import pg_connection

pytestmark = pytest.mark.integration


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


async def test_an_unreachable_postgres_is_a_retriable_store_unavailable(settings: Settings) -> None:
    down = settings.replace(postgres_dsn="postgresql://resultlog@127.0.0.1:1/resultlog")
    with pytest.raises(StoreUnavailable) as raised:
        await HookClaims(down).start()
    assert raised.value.retriable
