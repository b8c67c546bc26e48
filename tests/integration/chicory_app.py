"""The Chicory app the Chicory backend tests run: resultlog as its result backend, the
local stack's Redis (a database of its own) as its broker.

Also a worker process: ``python -m tests.integration.chicory_app`` runs a Chicory
worker with settings from ``RESULTLOG_*`` and ``CHICORY_TEST_BROKER_URL`` until killed.
"""

from __future__ import annotations

import asyncio
import os

from chicory import Chicory, ChicoryConfig, RedisBrokerConfig, RetryPolicy, TaskContext, Worker
from chicory.types import BrokerType, RetryBackoff

from resultlog.chicory_backend import ResultlogBackend
from resultlog.settings import Settings

# Chicory's Redis broker keys are fixed ("chicory:stream:default", ...): its own
# database on the local stack keeps them apart from everything else there.
BROKER_DB = 8
# A heartbeat every 0.5 s that lives 2 s: a killed worker drops out within seconds.
HEARTBEAT_INTERVAL_S = 0.5
HEARTBEAT_TTL_S = 2
BLOCK_MS = 500


def broker_url(settings: Settings) -> str:
    return settings.redis_url.rsplit("/", 1)[0] + f"/{BROKER_DB}"


def make_app(settings: Settings, broker: str, *, read_your_writes: bool = True) -> Chicory:
    config = ChicoryConfig()
    # Chicory's Worker.stop() waits 5 s for its consume loop, which blocks in XREADGROUP
    # for block_ms (default 5000): at the default the wait is cancelled mid-read, which
    # redis-py 8 turns into a redis TimeoutError that escapes stop(). Well below 5 s,
    # the loop sees the stop first.
    config.broker.redis = RedisBrokerConfig(url=broker, block_ms=BLOCK_MS)
    config.worker.heartbeat_interval = HEARTBEAT_INTERVAL_S
    config.worker.heartbeat_ttl = HEARTBEAT_TTL_S
    config.worker.concurrency = 4
    config.worker.use_dead_letter_queue = True
    app = Chicory(broker=BrokerType.REDIS, config=config,
                  backend=ResultlogBackend(settings, read_your_writes=read_your_writes))

    @app.task(name="tests.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="tests.boom")
    async def boom(message: str) -> None:
        raise ValueError(message)

    @app.task(name="tests.flaky", retry_policy=RetryPolicy(
        max_retries=2, retry_delay=0.05, backoff=RetryBackoff.FIXED, jitter=False))
    async def flaky(ctx: TaskContext) -> int:
        if ctx.retries < 1:
            raise RuntimeError("fail once")
        return ctx.retries

    @app.task(name="tests.doomed", retry_policy=RetryPolicy(
        max_retries=1, retry_delay=0.05, backoff=RetryBackoff.FIXED, jitter=False))
    async def doomed() -> None:
        raise RuntimeError("permanent failure")

    return app


async def _run_worker() -> None:
    app = make_app(Settings.from_env(), os.environ["CHICORY_TEST_BROKER_URL"])
    await app.connect()
    worker = Worker(app)
    await worker.start()
    print(f"worker {worker.worker_id} started", flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(_run_worker())
