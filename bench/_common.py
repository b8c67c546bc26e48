"""Shared by the benchmarks: isolated settings on the local stack, and cleanup."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import redis
from aiokafka.admin import AIOKafkaAdminClient

from resultlog import names
from resultlog.devstack.stack import DevStack
from resultlog.processors.replay import clear_redis_view
from resultlog.redis_access import sync_client
from resultlog.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def isolated(prefix: str, **changes: object) -> Settings:
    tag = f"{prefix}{uuid.uuid4().hex[:8]}"
    return Settings.from_env().replace(
        events_topic=f"bench.{tag}", consumer_group=f"bench.{tag}", redis_prefix=f"bench{tag}:",
        postgres_schema=f"bench_{tag}", **changes)


def percentiles(values: Sequence[float], *points: float) -> list[float]:
    """The given percentiles (50, 99, 99.9 ...) of ``values``, each bench computing them
    the same way: linear interpolation between the closest ranks (``method="inclusive"``,
    numpy's default), so a tail percentile never lies beyond the largest value measured.
    NaN for each when there are no values; every point is the value itself when there is one."""
    if not values:
        return [math.nan for _ in points]
    if len(values) == 1:
        return [float(values[0]) for _ in points]
    cuts = statistics.quantiles(values, n=1000, method="inclusive")
    return [cuts[round(point * 10) - 1] for point in points]


def _stat_seconds(pid: int, with_exited_children: bool) -> float:
    """utime + stime of /proc/<pid>/stat (and cutime + cstime: the children it reaped)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()  # after the command name, which may hold spaces
    ticks = fields[11:15] if with_exited_children else fields[11:13]
    return sum(int(v) for v in ticks) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux): unlike the wall-clock rate,
    it hardly moves when other work shares the cores."""
    return _stat_seconds(pid, with_exited_children=False)


def server_cpu_seconds(pid: int) -> float:
    """CPU time of a server process and all its workers so far (Linux): its own, its live
    children's, and what its children that have exited left in its ``cutime``/``cstime``
    (PostgreSQL's backends come and go; the postmaster reaps them)."""
    total = _stat_seconds(pid, with_exited_children=True)
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    for child in children:
        try:
            total += cpu_seconds(child)
        except OSError:  # exited since the listing: counted in cutime from now on
            pass
    return total


def local_pid(pid: int, program: str) -> int | None:
    """``pid`` if it is a process of this machine running ``program`` (a store of the
    local stack), else None: a server elsewhere reports a pid that means nothing here."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return None
    return pid if program.encode() in cmdline else None


def start_processor(settings: Settings) -> "subprocess.Popen[bytes]":
    """``resultlog process`` on ``settings`` (the caller's own RESULTLOG_* variables
    left out), quiet; the caller terminates it."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RESULTLOG_")},
           **settings.to_env()}
    return subprocess.Popen([sys.executable, "-m", "resultlog", "process", "--loglevel", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy so far, summed over its cores (Linux:
    /proc/stat, everything but idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _cpu_of(read: Callable[[int], float], pids: Sequence[int]) -> float:
    return sum(read(pid) for pid in pids)


def process_cpu(pid: int) -> Callable[[], float]:
    """A reader of one process's CPU time so far (not its children's)."""
    return partial(cpu_seconds, pid)


async def local_servers_cpu(settings: Settings) -> dict[str, Callable[[], float]]:
    """Readers of the CPU time of the servers of ``settings`` that run on this machine,
    each asked for its pid where it can be: PostgreSQL (the server behind a connection's
    backend, with all its backends), Redis (the process it reports, with the children it
    forks to save snapshots), Kafka (the local stack's nodes together, ``resultlog dev
    up``: a broker cannot be asked). A server elsewhere is left out: its CPU cannot be
    read from here."""
    readers: dict[str, Callable[[], float]] = {}
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        backend = conn.get_server_pid()
        try:
            with open(f"/proc/{backend}/status") as f:
                ppid = int(next(line for line in f if line.startswith("PPid:")).split()[1])
        except OSError:  # not a process of this machine
            ppid = None
        postgres = None if ppid is None else local_pid(ppid, "postgres")
    finally:
        await conn.close()
    if postgres is not None:
        readers["PostgreSQL"] = partial(server_cpu_seconds, postgres)
    client = sync_client(settings)
    try:
        redis_pid = local_pid(int(client.info("server")["process_id"]), "redis-server")
    finally:
        client.close()
    if redis_pid is not None:
        readers["Redis"] = partial(server_cpu_seconds, redis_pid)  # with a snapshot's fork
    kafka = [pid for svc in DevStack(settings, out=lambda line: None).services
             if svc.kind == "kafka" and (pid := svc.pid()) is not None]
    if kafka:
        readers["Kafka"] = partial(_cpu_of, cpu_seconds, kafka)
    return {name: readers[name] for name in ("Kafka", "PostgreSQL", "Redis") if name in readers}


class CpuMeter:
    """Where the CPU goes while a bench runs: each named process's CPU time from
    construction on, and the whole machine's."""

    def __init__(self, readers: Mapping[str, Callable[[], float]]) -> None:
        self.readers = dict(readers)
        self.before = {name: read() for name, read in self.readers.items()}
        self.machine_before = machine_busy_seconds()
        self.began = time.monotonic()

    def seconds(self) -> dict[str, float]:
        """Each process's CPU seconds since construction."""
        return {name: read() - self.before[name] for name, read in self.readers.items()}

    def machine_cores(self) -> float:
        """How many of the machine's cores were busy since construction, on average."""
        return (machine_busy_seconds() - self.machine_before) / (time.monotonic() - self.began)

    def report(self, rate: float) -> str:
        """One line: each process's share of a core and its CPU per event at ``rate``
        events/s, then the machine's busy cores."""
        elapsed = time.monotonic() - self.began
        parts = [f"{name} {used / elapsed:.2f} ({used / elapsed / rate * 1e6:.0f} us per event)"
                 for name, used in self.seconds().items()]
        return f"{', '.join(parts)}; the whole machine {self.machine_cores():.2f} of {os.cpu_count()} cores"


async def cleanup(settings: Settings) -> None:
    """Delete what a benchmark made: its topics, Redis keys, schema and faust directory."""
    shutil.rmtree(names.faust_data_dir(settings.dev_dir, settings.consumer_group), ignore_errors=True)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(settings.events_topic)]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()
    await clear_redis_view(settings)
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{settings.postgres_schema}" CASCADE')
    finally:
        await conn.close()


def resultlog_url(settings: Settings) -> str:
    """A ``resultlog://`` backend URL naming the isolated settings (the client reads them
    from it; the worker and processor have them as RESULTLOG_* too)."""
    query = urlencode({n: str(getattr(settings, n)) for n in (
        "events_topic", "consumer_group", "redis_prefix", "postgres_schema")})
    return f"resultlog://?{query}"


def backends_parser(doc: str) -> argparse.ArgumentParser:
    """The command line of a benchmark that compares backends: ``--backends`` is what
    :func:`for_each_backend` takes; the description is ``doc``'s first paragraph."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--backends", default="redis,resultlog",
                        help="comma-separated, in the order run (default redis,resultlog)")
    return parser


def for_each_backend(backends: str, prefix: str, redis_db: int,
                     one: Callable[[str, str, Settings], None], url_options: str = "") -> None:
    """``one(name, backend_url, settings)`` for each of ``backends`` (comma-separated:
    redis, resultlog), each on isolated settings; a resultlog run's stores are cleaned
    up after it. Redis is the local stack's, database ``redis_db``."""
    for name in backends.split(","):
        settings = isolated(prefix)
        if name == "redis":
            one(name, f"{settings.redis_url.rsplit('/', 1)[0]}/{redis_db}", settings)
        elif name == "resultlog":
            try:
                one(name, resultlog_url(settings) + (f"&{url_options}" if url_options else ""),
                    settings)
            finally:
                run(cleanup(settings))
        else:
            raise SystemExit(f"unknown backend {name!r}: redis or resultlog")


def start_celery_run(settings: Settings, broker: str, backend: str, queue: str,
                     processor_args: Sequence[str] = ()) -> "list[subprocess.Popen[bytes] | None]":
    """The start of a Celery benchmark run: a prefork worker of ``bench.celery_app``
    (concurrency 2) consuming ``queue``, and, when the backend is resultlog, a processor
    (log level from BENCH_PROCESSOR_LOGLEVEL, default warning). For
    :func:`stop_celery_run`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTLOG_")}
    env.update(settings.to_env(), CELERY_BROKER_URL=broker, CELERY_RESULT_BACKEND=backend,
               CELERY_BENCH_QUEUE=queue, PYTHONPATH=str(ROOT))
    processor = None
    if backend.startswith("resultlog"):
        processor = subprocess.Popen(
            [sys.executable, "-m", "resultlog", "process", "--loglevel",
             os.environ.get("BENCH_PROCESSOR_LOGLEVEL", "warning"), *processor_args],
            env=env, cwd=ROOT)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "-P", "prefork",
         "-c", "2", "-l", "warning", "--without-gossip", "--without-mingle",
         "--without-heartbeat", "-n", f"{queue}@%h"],
        env=env, cwd=ROOT)
    return [worker, processor]


def stop_celery_run(procs: "list[subprocess.Popen[bytes] | None]", broker: str,
                    queue: str) -> None:
    """The end of a Celery benchmark run: stop its worker and processor, and delete the
    run's queue from the broker so that the next run's worker does not consume it."""
    for proc in procs:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    client = redis.Redis.from_url(broker)
    try:
        client.delete(queue, f"_kombu.binding.{queue}")
    finally:
        client.close()


def run(coro: "asyncio.Future[object] | object") -> None:
    asyncio.run(coro)  # type: ignore[arg-type]
