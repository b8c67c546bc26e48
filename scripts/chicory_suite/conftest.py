"""Fixtures for Chicory's own integration tests (tests/integration/test_integration.py
of Chicory's repository, unmodified) run by scripts/chicory-suite.

Chicory's conftest builds ``chicory_app`` for broker/backend pairs on docker services;
this one builds the same fixtures, same names and same steps, for the Redis broker on
the local stack with each backend named in ``CHICORY_SUITE_BACKENDS``: Chicory's own
Redis backend (``redis``) and resultlog (``resultlog``, settings from ``RESULTLOG_*``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator

import pytest
import pytest_asyncio
from chicory.app import Chicory
from chicory.config import ChicoryConfig, RedisBackendConfig, RedisBrokerConfig
from chicory.types import BackendType, BrokerType
from chicory.worker import Worker

from resultlog.chicory_backend import ResultlogBackend
from resultlog.settings import Settings

BROKER_URL = os.environ["CHICORY_SUITE_BROKER_URL"]
REDIS_BACKEND_URL = os.environ["CHICORY_SUITE_REDIS_BACKEND_URL"]
BACKENDS = os.environ.get("CHICORY_SUITE_BACKENDS", "redis,resultlog").split(",")
# Chicory's Worker.stop() waits 5 s for a consume loop that blocks in XREADGROUP for
# block_ms (default 5000 ms); with redis-py 8 the cancelled read escapes stop() as a
# redis TimeoutError. The same, shorter block for every backend keeps stop() clean.
BLOCK_MS = int(os.environ.get("CHICORY_SUITE_BLOCK_MS", "500"))


async def _setup_app(backend: str) -> Chicory:
    config = ChicoryConfig()
    config.broker.redis = RedisBrokerConfig(url=BROKER_URL, block_ms=BLOCK_MS)
    if backend == "redis":
        config.backend.redis = RedisBackendConfig(url=REDIS_BACKEND_URL)
        app = Chicory(broker=BrokerType.REDIS, backend=BackendType.REDIS, config=config)
    else:
        app = Chicory(broker=BrokerType.REDIS, backend=ResultlogBackend(Settings.from_env()),
                      config=config)
    await app.connect()
    await app.broker.purge_queue()
    await app.broker.purge_dlq()
    return app


@pytest_asyncio.fixture(params=BACKENDS, ids=[f"redis-{b}" for b in BACKENDS])
async def chicory_app(request: pytest.FixtureRequest) -> AsyncGenerator[Chicory]:
    app = await _setup_app(request.param)
    yield app
    await app.disconnect()


@pytest_asyncio.fixture
async def chicory_worker(chicory_app: Chicory, clean_queue: None) -> AsyncGenerator[Worker]:
    # The one change to Chicory's fixtures: ``clean_queue`` (the test module's own
    # fixture) runs before the worker starts, not after. Its purge DELetes the stream,
    # and a worker already blocked in XREADGROUP on it gets "UNBLOCKED the stream key no
    # longer exists" (Redis >= 7), which ends Chicory's consume loop: every task of the
    # test would then time out, whatever the backend.
    chicory_app.config.worker.use_dead_letter_queue = True
    worker = Worker(chicory_app)
    await worker.start()
    yield worker
    await worker.stop(timeout=5)
