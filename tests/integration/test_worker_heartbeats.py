"""Heartbeats whose text PostgreSQL cannot hold as it is (a NUL) through a real processor:
it folds them and goes on, and every reader gets the original text back."""

from __future__ import annotations

from datetime import datetime, timezone

from resultlog.dashboard.workers import WorkerReads
from resultlog.producers import Emitter
from resultlog.producers.heartbeats import send_heartbeat
from resultlog.redis_access import async_client
from resultlog.schemas.event import now_ms
from resultlog.schemas.workers import WorkerHeartbeat
from resultlog.settings import Settings
from resultlog.views import HistoryStore, ResultBackend
from resultlog.views.workers import WorkersHistory, WorkersView
from tests.integration.processes import ProcessorProcess
from tests.integration.test_pipeline import eventually

HOSTILE = "a\x00b\x01c"  # U+0000 PostgreSQL refuses in text and jsonb; U+0001 is the escape


async def test_a_heartbeat_with_a_nul_is_folded_and_the_processor_goes_on(settings: Settings) -> None:
    beat = WorkerHeartbeat.create(
        f"w-{HOSTILE}", ttl_s=3600, source="test", hostname=f"host-{HOSTILE}", pid=1, queue=HOSTILE,
        concurrency=1, started_at=now_ms() - 1000, meta={HOSTILE: HOSTILE})
    processor = ProcessorProcess(settings).start()
    try:
        async with Emitter(settings, worker="w-1") as em:
            await send_heartbeat(em, beat)
            # After it in the log: folded only if the processor got past the heartbeat.
            await em.success("after-the-heartbeat", 1)
        async with ResultBackend(settings) as backend:
            assert await backend.AioAsyncResult("after-the-heartbeat").get(timeout=60) == 1, \
                processor.log.read_text()
        async with WorkersHistory(settings) as history:
            async def stored() -> bool:
                return await history.pool.fetchval(f"SELECT count(*) FROM {history.table}") == 1
            await eventually(stored, "the heartbeat in the history", 60)
            beats = await WorkerReads(history.pool, settings.postgres_schema).heartbeats(
                datetime.now(timezone.utc))
            assert list(beats) == [beat.worker_id]
            assert (beats[beat.worker_id].hostname, beats[beat.worker_id].source) == (beat.hostname, "test")
        client = async_client(settings)
        try:
            assert await WorkersView(settings, client).get(beat.worker_id) == beat
        finally:
            await client.aclose()
        async with HistoryStore(settings) as history_store:
            assert await history_store.count() == 1
    finally:
        processor.stop()
