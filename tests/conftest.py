"""Fixtures shared by every test: real services once per session, isolation per test.

``RESULTLOG_TEST_SERVICES`` says where Kafka, Redis and PostgreSQL come from:

- ``auto`` (default) or ``local``: the local stack (``resultlog dev up``), brought up
  once per session if it is not running already (cheap when it is);
- ``env``: exactly the services named by the ``RESULTLOG_*`` settings, used as they are;
- ``docker``: throw-away containers through testcontainers (needs a Docker engine).

Fixtures:

- ``base_settings`` (session): settings that point at the services.
- ``settings``: the same, isolated for one test: its own events topic ``t.<hex>``
  (and so its own dead-letter/chord topics), consumer group, Redis key prefix
  ``t<hex>:`` and Postgres schema ``t_<hex>``; afterwards the test's topics (every topic
  whose name starts with its events topic), keys and schema are deleted.
- ``redis_client``: a ``redis.asyncio.Redis`` on the test's settings.
- ``pg_pool``: an asyncpg pool whose ``search_path`` is the test's schema, then public.
- ``kafka_admin``: a started ``AIOKafkaAdminClient``.
- ``quiet_aiokafka``: aiokafka's logging silenced for a test that makes brokers refuse
  or vanish (aiokafka logs each refused connection at ERROR).

Any test that uses ``base_settings`` (directly or through the others) is marked
``integration``, so ``pytest -m "not integration"`` runs without services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
import redis.asyncio
from hypothesis import HealthCheck, settings as hypothesis_settings
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

from resultlog import names
from resultlog.connections import kafka_client_args, postgres_dsn, redis_url
from resultlog.devstack import DevStack
from resultlog.devstack.kafka import KafkaService
from resultlog.devstack.postgres import PostgresService
from resultlog.devstack.redis import RedisService
from resultlog.devstack.service import Service
from resultlog.redaction import redact_url
from resultlog.settings import Settings

# How fast examples are generated and run depends on the machine's load, not on the
# code under test: a shared 2-core machine must not fail a property for being busy.
hypothesis_settings.register_profile(
    "resultlog", deadline=None, suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.load_profile("resultlog")

_SERVICE_FIXTURES = {"base_settings"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _SERVICE_FIXTURES and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)


def pytest_report_header(config: pytest.Config) -> str:
    try:
        s = Settings.from_env()
    except Exception as exc:  # reported again, properly, by the fixture
        return f"resultlog services: settings error: {exc}"
    where = {
        "auto": f"local stack (state in {s.dev_dir})",
        "local": f"local stack (state in {s.dev_dir})",
        "env": "as named by RESULTLOG_*",
        "docker": "Docker containers (testcontainers)",
    }[s.test_services]
    return (
        f"resultlog services ({s.test_services}): {where}: kafka {s.kafka_bootstrap_servers}, "
        f"redis {redact_url(s.redis_url)}, postgres {s.postgres_dsn.rpartition('@')[2]}"
    )


async def _require_answering(settings: Settings) -> None:
    probes: list[tuple[Service, str]] = [
        (KafkaService(settings, print), "RESULTLOG_KAFKA_BOOTSTRAP_SERVERS"),
        (RedisService(settings, print), "RESULTLOG_REDIS_URL"),
        (PostgresService(settings, print), "RESULTLOG_POSTGRES_DSN"),
    ]
    answers = await asyncio.gather(*(svc.answers() for svc, _ in probes))
    silent = [f"{svc.name} ({setting})" for (svc, setting), ok in zip(probes, answers) if not ok]
    if silent:
        pytest.fail(
            "RESULTLOG_TEST_SERVICES=env, but these services do not answer: " + ", ".join(silent),
            pytrace=False,
        )


@pytest.fixture(scope="session")
async def base_settings() -> AsyncIterator[Settings]:
    settings = Settings.from_env()
    mode = settings.test_services
    if mode == "env":
        await _require_answering(settings)
        yield settings
    elif mode == "docker":
        from resultlog.devstack.containers import ContainerStack, docker_unavailable

        reason = docker_unavailable()
        if reason is not None:
            pytest.fail(f"RESULTLOG_TEST_SERVICES=docker, but {reason}", pytrace=False)
        stack = ContainerStack(settings)
        try:
            yield await stack.start()
        finally:
            await asyncio.to_thread(stack.stop)
    else:
        # Idempotent: when `resultlog dev up` ran before pytest, this only checks.
        await DevStack(settings).up()
        yield settings


@pytest.fixture
async def settings(base_settings: Settings) -> AsyncIterator[Settings]:
    tag = uuid.uuid4().hex[:12]
    isolated = base_settings.replace(
        events_topic=f"t.{tag}",
        consumer_group=f"t.{tag}.group",
        redis_prefix=f"t{tag}:",
        postgres_schema=f"t_{tag}",
    )
    yield isolated
    await cleanup(isolated)


async def cleanup(settings: Settings) -> None:
    """Delete what a test made: its topics, its Redis keys, its Postgres schema and its
    processors' faust data directory."""
    shutil.rmtree(names.faust_data_dir(settings.dev_dir, settings.consumer_group), ignore_errors=True)
    outcomes = await asyncio.gather(
        _delete_topics(settings),
        _delete_keys(settings),
        _drop_schema(settings),
        return_exceptions=True,
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


async def _delete_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**kafka_client_args(settings), request_timeout_ms=15000)
    try:
        await admin.start()
        topics = [t for t in await admin.list_topics() if t.startswith(settings.events_topic)]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()


async def _delete_keys(settings: Settings) -> None:
    client = redis.asyncio.Redis.from_url(redis_url(settings))
    try:
        batch: list[Any] = []
        async for key in client.scan_iter(match=f"{settings.redis_prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


async def _drop_schema(settings: Settings) -> None:
    conn = await asyncpg.connect(postgres_dsn(settings))
    try:
        schema = settings.postgres_schema.replace('"', '""')
        # A connection the test leaked would block the drop forever: fail instead.
        await conn.execute("SET lock_timeout = '20s'")
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def redis_client(settings: Settings) -> AsyncIterator[redis.asyncio.Redis]:
    async with redis.asyncio.Redis.from_url(redis_url(settings)) as client:
        yield client


@contextlib.asynccontextmanager
async def pg_connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """One PostgreSQL connection, closed on the way out."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def pg_pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(
        postgres_dsn(settings),
        min_size=1,
        max_size=5,
        server_settings={"search_path": f"{settings.postgres_schema},public"},
    )
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def kafka_admin(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(**kafka_client_args(settings))
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


@pytest.fixture
def quiet_aiokafka() -> Iterator[None]:
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)
