"""The systems bench/peers.py compares, each written and read through its own API.

Every system is a :class:`System`: ``setup``/``teardown`` in the parent process (its
isolated keys, tables or topic on the local stack), and ``open_writer``/``open_reader``
in the child processes, giving plain blocking calls:

- ``Writer.started(task_id)`` and ``Writer.success(task_id, result)``: what a worker
  does for each task; ``Writer.close()`` waits for anything the writer buffered;
- ``Reader.ready_many(task_ids)``: which of the tasks are SUCCESS, read once, in as few
  round trips as the system's API allows (Celery's key-value backends: ``get_many``, one
  MGET; resultlog: ``ResultBackend.read_many``, one script call; Celery's database
  backend and Chicory have no read of many tasks: one by one);
- ``Reader.get(task_id)``: the client already waiting for a result (returns it).

The peers are optional dependencies of the benchmark only (``pip install -e .[bench]``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol
from urllib.parse import urlencode

import redis

from resultlog.settings import Settings

TIMEOUT_S = 120.0


class Writer(Protocol):
    def started(self, task_id: str) -> None: ...
    def success(self, task_id: str, result: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class Reader(Protocol):
    def ready_many(self, task_ids: list[str]) -> set[str]: ...
    def get(self, task_id: str) -> Any: ...
    def close(self) -> None: ...


@dataclass
class System:
    """One row of the table. ``tag`` isolates this run's keys, tables and topic."""

    name: str
    keeps: str
    tag: str
    settings: Settings
    _processor: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: The modules this system imports beyond resultlog's own (the ``bench`` extra).
    needs: ClassVar[tuple[str, ...]] = ()

    def __getstate__(self) -> dict[str, Any]:
        # Sent to the child processes, which never need the parent's processor.
        return {**self.__dict__, "_processor": None}

    def setup(self) -> None: ...
    def teardown(self) -> None: ...
    def open_writer(self) -> Writer: raise NotImplementedError
    def open_reader(self) -> Reader: raise NotImplementedError

    @property
    def schema(self) -> str:
        return f"bench_{self.tag}"


# -- Celery (Redis backend and database backend) ----------------------------------------

def _celery_app(backend: str, **conf: Any) -> Any:
    from celery import Celery  # type: ignore[import-untyped]
    app = Celery(f"peers-{os.getpid()}", broker="memory://", backend=backend, set_as_current=False)
    app.conf.update(conf)
    return app


class _CeleryWriter:
    def __init__(self, app: Any) -> None:
        self.backend = app.backend

    def started(self, task_id: str) -> None:
        self.backend.store_result(task_id, None, "STARTED")

    def success(self, task_id: str, result: dict[str, Any]) -> None:
        self.backend.store_result(task_id, result, "SUCCESS")

    def close(self) -> None:
        pass


class _CeleryReader:
    def __init__(self, app: Any) -> None:
        self.app = app

    def ready_many(self, task_ids: list[str]) -> set[str]:
        backend = self.app.backend
        if hasattr(backend, "get_many"):
            # One MGET of the tasks not already ready (the interval and the one
            # iteration keep get_many from waiting for the rest).
            return {tid for tid, meta in backend.get_many(task_ids, interval=0, max_iterations=1)
                    if meta["status"] == "SUCCESS"}
        return {tid for tid in task_ids if self.app.AsyncResult(tid).state == "SUCCESS"}

    def get(self, task_id: str) -> Any:
        return self.app.AsyncResult(task_id).get(timeout=TIMEOUT_S)

    def close(self) -> None:
        pass


class CeleryRedis(System):
    needs = ("celery",)

    def _app(self) -> Any:
        return _celery_app(self.settings.redis_url, result_backend_transport_options={
            "global_keyprefix": f"{self.tag}:"})

    def open_writer(self) -> Writer:
        return _CeleryWriter(self._app())

    def open_reader(self) -> Reader:
        return _CeleryReader(self._app())

    def teardown(self) -> None:
        _delete_keys(self.settings.redis_url, f"{self.tag}:*")


class CeleryDatabase(System):
    needs = ("celery", "sqlalchemy", "psycopg")

    def _app(self) -> Any:
        app = _celery_app(f"db+{_sqlalchemy_dsn(self.settings, 'psycopg')}",
                          database_table_schemas={"task": self.schema, "group": self.schema})
        # Pooled connections, as in a forked worker or web process. In a process that
        # never forked Celery opens a new engine and connection for every read and
        # write (SessionManager.forked is False): that would measure connection set-up.
        app.backend.session_manager._after_fork()
        return app

    def setup(self) -> None:
        _psql(self.settings, f'CREATE SCHEMA "{self.schema}"')
        # The tables, made once here rather than raced for by the writers.
        session = self._app().backend.ResultSession()
        session.close()

    def open_writer(self) -> Writer:
        return _CeleryWriter(self._app())

    def open_reader(self) -> Reader:
        return _CeleryReader(self._app())

    def teardown(self) -> None:
        _psql(self.settings, f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


# -- Chicory (Redis and Postgres backends; asyncio only) --------------------------------

class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


class _ChicoryClient(_Loop):
    def __init__(self, backend: Any) -> None:
        super().__init__()
        self.backend = backend
        self.run(backend.connect())

    def started(self, task_id: str) -> None:
        from chicory.types import TaskState  # type: ignore[import-not-found]
        self.run(self.backend.set_state(task_id, TaskState.STARTED))

    def success(self, task_id: str, result: dict[str, Any]) -> None:
        from chicory.types import TaskResult, TaskState
        self.run(self.backend.store_result(
            task_id, TaskResult(task_id=task_id, state=TaskState.SUCCESS, result=result)))

    def ready_many(self, task_ids: list[str]) -> set[str]:
        from chicory.types import TaskState
        ready = set()
        for tid in task_ids:
            found = self.run(self.backend.get_result(tid))
            if found is not None and found.state == TaskState.SUCCESS:
                ready.add(tid)
        return ready

    def get(self, task_id: str) -> Any:
        from chicory.result import AsyncResult  # type: ignore[import-not-found]
        return self.run(AsyncResult(task_id, self.backend).get(timeout=TIMEOUT_S))

    def close(self) -> None:
        self.run(self.backend.disconnect())
        self.loop.close()


class ChicoryRedis(System):
    needs = ("chicory",)

    def _client(self) -> _ChicoryClient:
        from chicory.backend.redis import RedisBackend  # type: ignore[import-not-found]
        from chicory.config import RedisBackendConfig  # type: ignore[import-not-found]
        return _ChicoryClient(RedisBackend(RedisBackendConfig(url=self.settings.redis_url)))

    def open_writer(self) -> Writer:
        return self._client()

    def open_reader(self) -> Reader:
        return self._client()

    def teardown(self) -> None:
        # Chicory's keys have no configurable prefix; the task ids carry the tag.
        _delete_keys(self.settings.redis_url, f"chicory:*:{self.tag}-*")


class ChicoryPostgres(System):
    needs = ("chicory", "sqlalchemy", "asyncpg")

    def _client(self) -> _ChicoryClient:
        from chicory.backend.database import DatabaseBackend  # type: ignore[import-not-found]
        from chicory.backend.models import Base  # type: ignore[import-not-found]
        from chicory.config import PostgresBackendConfig  # type: ignore[import-not-found]
        # Chicory's table names are fixed: this run's copies live in a schema of its own.
        for table in Base.metadata.tables.values():
            table.schema = self.schema
        config = PostgresBackendConfig(url=_sqlalchemy_dsn(self.settings, "asyncpg"))
        return _ChicoryClient(DatabaseBackend(config))

    def setup(self) -> None:
        _psql(self.settings, f'CREATE SCHEMA "{self.schema}"')
        self._client().close()  # makes the tables

    def open_writer(self) -> Writer:
        return self._client()

    def open_reader(self) -> Reader:
        return self._client()

    def teardown(self) -> None:
        _psql(self.settings, f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


# -- resultlog --------------------------------------------------------------------------

class _ResultlogWriter:
    def __init__(self, settings: Settings, read_your_writes: bool,
                 max_buffered_events: int | None = None) -> None:
        from resultlog.producers import SyncEmitter
        from resultlog.producers.options import EmitterOptions
        options = EmitterOptions(read_your_writes=read_your_writes)
        if max_buffered_events is not None:
            options["max_buffered_events"] = max_buffered_events
        self.emitter = SyncEmitter(settings, **options)

    def started(self, task_id: str) -> None:
        self.emitter.started(task_id, task_name="bench.add")

    def success(self, task_id: str, result: dict[str, Any]) -> None:
        self.emitter.success(task_id, result, task_name="bench.add")

    def close(self) -> None:
        self.emitter.close()


class _ResultlogReader:
    def __init__(self, settings: Settings) -> None:
        from resultlog.views import ResultBackend
        self.backend = ResultBackend(settings)

    def ready_many(self, task_ids: list[str]) -> set[str]:
        from resultlog.schemas.states import State
        views = self.backend.read_many(task_ids)
        return {tid for tid, v in zip(task_ids, views) if v is not None and v.state is State.SUCCESS}

    def get(self, task_id: str) -> Any:
        return self.backend.AsyncResult(task_id).get(timeout=TIMEOUT_S)

    def close(self) -> None:
        self.backend.close()


class Resultlog(System):
    """The emitter, one processor process, both stores."""

    read_your_writes = False
    processor_linger_ms = 0
    #: The writers' emitter option (bench.peers --max-buffered-events); None: its default.
    max_buffered_events: int | None = None
    #: Whether a write call returns once its event is buffered, before Kafka acknowledged
    #: it: only then does max_buffered_events bound what a waited-for result queues behind.
    buffers: ClassVar[bool] = True

    def setup(self) -> None:
        from resultlog.producers.topics import ensure_topics
        asyncio.run(ensure_topics(self.settings, self.settings.events_topic,
                                  self.settings.dead_letter_topic))
        from bench._common import start_processor
        self._processor = start_processor(
            self.settings.replace(processor_linger_ms=self.processor_linger_ms))
        # Up and folding before the clock starts: a task through the whole path on every
        # partition (each partition's first batch, fetch and fold are behind us). A
        # writer that does not fold itself: what becomes readable, the processor folded.
        from resultlog.producers.partitioner import partition_for
        partitions = self.settings.topic_partitions
        warmups = {partition_for(f"{self.tag}-warmup-{k}".encode(), partitions):
                   f"{self.tag}-warmup-{k}" for k in range(64 * partitions)}
        if len(warmups) < partitions:
            raise RuntimeError(f"warm-up ids cover {len(warmups)} of {partitions} partitions")
        writer, reader = _ResultlogWriter(self.settings, False), self.open_reader()
        try:
            for tid in warmups.values():
                writer.success(tid, {})
            writer.close()
            for tid in warmups.values():
                reader.get(tid)
        finally:
            reader.close()

    def open_writer(self) -> Writer:
        return _ResultlogWriter(self.settings, self.read_your_writes, self.max_buffered_events)

    def open_reader(self) -> Reader:
        return _ResultlogReader(self.settings)

    def teardown(self) -> None:
        from bench._common import cleanup
        if self._processor is not None:
            self._processor.terminate()
            self._processor.wait(60)
        asyncio.run(cleanup(self.settings))


class ResultlogReadYourWrites(Resultlog):
    """The same, with the emitter folding what Kafka acknowledged into the view itself
    (the emitter option ``read_your_writes``; the processor folds it again), and the
    processor lingering 20 ms for fuller batches, as docs/processor.md suggests where
    writers fold themselves."""

    read_your_writes = True
    processor_linger_ms = 20


class CeleryResultlog(Resultlog):
    """resultlog as what a Celery app switches to with one setting: ``result_backend =
    "resultlog://"``, written and read through Celery's API exactly as the Celery rows
    are. With the backend's defaults its ``store_result`` returns once Kafka acknowledged
    the event and the storing process folded it into the view (``read_your_writes``), as
    Celery's Redis backend returns once its ``SET`` is done; so, unlike the emitter rows,
    a write call never returns ahead of what it wrote. The processor lingers 20 ms, as
    in ``resultlog-ryw``, whatever the options: they are all that differs between runs."""

    needs = ("celery",)
    buffers = False
    processor_linger_ms = 20  # as resultlog-ryw's (its writers fold for themselves too)
    #: More of the backend's options in its URL (bench.peers --celery-resultlog-options),
    #: e.g. {"read_your_writes": "false"}; empty: its defaults.
    options: Mapping[str, str] = {}

    def _url(self) -> str:
        from bench._common import resultlog_url
        url = resultlog_url(self.settings)  # the run's isolated settings
        return f"{url}&{urlencode(self.options)}" if self.options else url

    def open_writer(self) -> Writer:
        return _CeleryWriter(_celery_app(self._url()))

    def open_reader(self) -> Reader:
        return _CeleryReader(_celery_app(self._url()))


SYSTEMS: dict[str, tuple[type[System], str, str]] = {
    "celery-redis": (CeleryRedis, "Celery {celery} Redis backend", "latest state"),
    "celery-db": (CeleryDatabase, "Celery {celery} database backend (PostgreSQL)", "latest state"),
    "chicory-redis": (ChicoryRedis, "Chicory {chicory} Redis backend", "latest state"),
    "chicory-postgres": (ChicoryPostgres, "Chicory {chicory} Postgres backend", "latest state"),
    "resultlog": (Resultlog, "resultlog (emitter, processor, both stores)",
                  "every transition + the log"),
    "resultlog-ryw": (ResultlogReadYourWrites,
                      "resultlog, emitter with read_your_writes (processor lingering 20 ms, "
                      "both stores)",
                      "every transition + the log"),
    "celery-resultlog": (CeleryResultlog,
                         "Celery {celery} on resultlog:// (processor lingering 20 ms, both stores)",
                         "every transition + the log"),
}


# -- helpers ----------------------------------------------------------------------------

def _sqlalchemy_dsn(settings: Settings, driver: str) -> str:
    scheme, rest = settings.postgres_dsn.split("://", 1)
    return f"postgresql+{driver}://{rest}"


def _psql(settings: Settings, sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(settings.postgres_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
    asyncio.run(run())


def _delete_keys(url: str, pattern: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        batch = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    finally:
        client.close()
