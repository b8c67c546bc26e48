"""The Chicory app bench/chicory_backend.py runs, and its worker process:

    python -m bench.chicory_app BACKEND     # redis | postgres | resultlog

Broker and backend locations come from the environment (CHICORY_BENCH_BROKER_URL,
CHICORY_BENCH_REDIS_URL, CHICORY_BENCH_POSTGRES_URL, RESULTLOG_*).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from chicory import Chicory, ChicoryConfig, PostgresBackendConfig, RedisBackendConfig, RedisBrokerConfig, Worker
from chicory.backend import Backend
from chicory.types import BackendType, BrokerType

from resultlog.chicory_backend import ResultlogBackend

CONCURRENCY = 8


def make_app(backend: str) -> Chicory:
    config = ChicoryConfig()
    # Well below Worker.stop()'s 5 s wait (see tests/integration/chicory_app.py).
    config.broker.redis = RedisBrokerConfig(url=os.environ["CHICORY_BENCH_BROKER_URL"], block_ms=500)
    config.worker.concurrency = CONCURRENCY
    chosen: BackendType | Backend
    if backend == "redis":
        config.backend.redis = RedisBackendConfig(url=os.environ["CHICORY_BENCH_REDIS_URL"])
        chosen = BackendType.REDIS
    elif backend == "postgres":
        config.backend.postgres = PostgresBackendConfig(url=os.environ["CHICORY_BENCH_POSTGRES_URL"])
        chosen = BackendType.POSTGRES
    elif backend == "resultlog":
        chosen = ResultlogBackend()
    else:
        raise SystemExit(f"unknown backend {backend!r}: redis, postgres or resultlog")
    app = Chicory(broker=BrokerType.REDIS, backend=chosen, config=config)

    @app.task(name="bench.noop")
    async def noop() -> float:
        return time.time()  # when the task ended: the latency's start

    return app


async def _work(backend: str) -> None:
    worker = Worker(make_app(backend))
    await worker.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_work(sys.argv[1]))
