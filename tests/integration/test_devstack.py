"""``resultlog dev``: idempotent up, down then up, refusal to touch foreign processes.

The session's stack is only ever looked at and re-``up``-ed, never stopped; the tests
that stop things run a separate instance (own state directory, own ports).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

from resultlog.devstack import DevStack
from resultlog.devstack import process
from resultlog.devstack.private import private_settings
from resultlog.errors import DevStackError
from resultlog.settings import Settings
from tests.conftest import pg_connection

pytestmark = pytest.mark.integration


def _needs_local_stack(settings: Settings) -> None:
    if settings.test_services not in ("auto", "local"):
        pytest.skip(f"the session's services are not the local stack ({settings.test_services})")


@pytest.fixture
def dev_dir() -> Iterator[Path]:
    # Not under /tmp/pytest-of-root (mode 700): the postgres user must reach it.
    path = Path(tempfile.mkdtemp(prefix="resultlog-test-stack-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _separate(base: Settings, dev_dir: Path) -> Settings:
    """The settings of a one-node instance of our own, on free ports, in ``dev_dir``."""
    return private_settings(base, dev_dir, brokers=1)


def _cli_env(settings: Settings) -> dict[str, str]:
    """The environment of a ``resultlog dev`` command run on ``settings``' stack."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTLOG_")}
    return env | {
        "RESULTLOG_DEV_DIR": settings.dev_dir,
        "RESULTLOG_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "RESULTLOG_REDIS_URL": settings.redis_url,
        "RESULTLOG_POSTGRES_DSN": settings.postgres_dsn,
    }


async def test_up_twice_leaves_the_running_stack_alone(base_settings: Settings) -> None:
    _needs_local_stack(base_settings)
    lines: list[str] = []
    stack = DevStack(base_settings, out=lines.append)
    before = {s.name: s.pid for s in await stack.status()}
    assert all(before.values()), before

    first = await stack.up()
    second = await stack.up()

    for reports in (first, second):
        assert {r.name: r.pid for r in reports} == before
        assert not any(r.started for r in reports)
    assert sum("already running" in line for line in lines) == 2 * len(before)
    assert {s.name: s.pid for s in await stack.status()} == before


@pytest.mark.slow
async def test_down_then_up_on_a_separate_instance(base_settings: Settings, dev_dir: Path) -> None:
    _needs_local_stack(base_settings)
    settings = _separate(base_settings, dev_dir)
    stack = DevStack(settings, out=lambda line: None)
    try:
        first = await stack.up()
        assert all(r.started for r in first)
        states = await stack.status()
        assert all(s.running and s.answering for s in states), states
        # Leave a mark in the stores that keep data: a topic and a table.
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic("kept", num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()
        async with pg_connection(settings.postgres_dsn) as conn:
            await conn.execute("CREATE TABLE kept (id int)")

        outcomes = await stack.down()
        assert all(o.startswith("stopped") for o in outcomes.values()), outcomes
        assert not any(s.running for s in await stack.status())
        for svc in stack.services:
            assert not any(process.port_in_use(p.number) for p in svc.ports), svc.name
            assert all(not process.pid_alive(r.pid) for r in first if r.name == svc.name)

        second = await stack.up()
        assert all(r.started for r in second)
        assert {r.name for r in second} == {r.name for r in first}
        assert not {r.pid for r in second} & {r.pid for r in first}

        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        await admin.start()
        try:
            assert "kept" in await admin.list_topics()
        finally:
            await admin.close()
        async with pg_connection(settings.postgres_dsn) as conn:
            assert await conn.fetchval("SELECT count(*) FROM kept") == 0
    finally:
        await stack.down(purge=True)


async def test_a_port_taken_by_a_foreign_socket_fails_fast_and_starts_nothing(
    base_settings: Settings, dev_dir: Path
) -> None:
    _needs_local_stack(base_settings)
    settings = _separate(base_settings, dev_dir)
    stack = DevStack(settings, out=lambda line: None)
    redis_port = stack.service("redis").ports[0].number
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", redis_port))
        foreign.listen()
        with pytest.raises(DevStackError) as caught:
            await stack.up()

    message = str(caught.value)
    assert f"port {redis_port} (redis)" in message
    assert "RESULTLOG_REDIS_URL" in message
    assert f"pid {os.getpid()}" in message  # who holds it
    assert not any(s.running for s in await stack.status())
    assert sorted(p.name for p in dev_dir.iterdir()) == [".lock"]


async def test_down_never_signals_a_process_it_did_not_start(
    base_settings: Settings, dev_dir: Path
) -> None:
    _needs_local_stack(base_settings)
    settings = _separate(base_settings, dev_dir)
    stranger = subprocess.Popen(["sleep", "60"], cwd="/")
    try:
        (dev_dir / "redis").mkdir()
        (dev_dir / "redis" / "redis.pid").write_text(f"{stranger.pid}\n")
        outcomes = await DevStack(settings, only="redis", out=lambda line: None).down()
        assert "not ours" in outcomes["redis"]
        await asyncio.sleep(0.2)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_the_command_line_reports_status_and_logs(base_settings: Settings) -> None:
    _needs_local_stack(base_settings)
    env = _cli_env(base_settings)
    cli = [sys.executable, "-m", "resultlog", "dev"]
    status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    for name in ("kafka", "redis", "postgres"):
        assert f"{name} " in status.stdout and "running" in status.stdout

    logs = subprocess.run(
        [*cli, "logs", "redis", "-n", "5"], env=env, capture_output=True, text=True, timeout=60
    )
    assert logs.returncode == 0, logs.stderr
    assert "redis.log" in logs.stdout

    bad = subprocess.run([*cli, "up", "--only", "kafka,mysql"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1
    assert "mysql" in bad.stderr


def test_the_command_line_takes_a_kafka_node_count(base_settings: Settings, dev_dir: Path) -> None:
    _needs_local_stack(base_settings)
    settings = _separate(base_settings, dev_dir)
    env = _cli_env(settings)
    cli = [sys.executable, "-m", "resultlog", "dev", "status", "--only", "kafka"]
    three = subprocess.run([*cli, "--brokers", "3"], env=env, capture_output=True, text=True, timeout=60)
    assert three.returncode == 1  # nothing runs
    port = int(settings.kafka_bootstrap_servers.rpartition(":")[2])
    for node in (1, 2, 3):
        assert f"kafka-{node}   127.0.0.1:{port + 2 * (node - 1)}" in three.stdout, three.stdout

    two = subprocess.run([*cli, "--brokers", "2"], env=env, capture_output=True, text=True, timeout=60)
    assert two.returncode == 2 and "--brokers" in two.stderr
    by_env = subprocess.run(cli, env=env | {"RESULTLOG_DEV_KAFKA_BROKERS": "2"},
                            capture_output=True, text=True, timeout=60)
    assert by_env.returncode == 1 and "RESULTLOG_DEV_KAFKA_BROKERS" in by_env.stderr


async def test_down_for_one_kafka_node_names_the_cluster_that_runs_instead(
    base_settings: Settings, dev_dir: Path
) -> None:
    _needs_local_stack(base_settings)
    settings = _separate(base_settings, dev_dir)
    node = dev_dir / "kafka-2"
    node.mkdir()
    # Stands in for node 2 of a cluster: a process of ours working in its directory.
    pid = process.spawn_detached(["sleep", "60"], cwd=node, log_path=node / "kafka.log")
    (node / "kafka.pid").write_text(f"{pid}\n")
    try:
        outcomes = await DevStack(settings, only="kafka", out=lambda line: None).down()
        assert outcomes["kafka"].startswith("not running; Kafka node(s) kafka-2 of ")
        assert "--brokers" in outcomes["kafka"]
        assert process.pid_alive(pid)
    finally:
        process.kill_group(pid, what="sleep")


async def test_a_service_that_exits_while_starting_is_reported_with_its_log(
    base_settings: Settings, dev_dir: Path
) -> None:
    _needs_local_stack(base_settings)
    stack = DevStack(_separate(base_settings, dev_dir), only="redis", out=lambda line: None)
    redis = stack.service("redis")
    good_config = redis.config  # type: ignore[attr-defined]
    redis.config = lambda: good_config() + "no-such-directive yes\n"  # type: ignore[attr-defined]

    with pytest.raises(DevStackError) as caught:
        await stack.up()

    message = str(caught.value)
    assert "redis (127.0.0.1:" in message and "exited while starting" in message
    assert "no-such-directive" in message  # the tail of redis.log
    assert not any(s.running for s in await stack.status())


async def test_missing_java_or_maven_is_named_before_anything_starts(
    base_settings: Settings, dev_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_local_stack(base_settings)
    settings = _separate(base_settings, dev_dir)
    bin_dir = dev_dir / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(DevStackError, match=r"`java` is not on PATH"):
        await DevStack(settings, out=lambda line: None).up()

    java = shutil.which("java", path=os.defpath + ":/usr/lib/jvm/default-java/bin")
    assert java is not None
    (bin_dir / "java").symlink_to(java)
    empty_cache = settings.replace(dev_cache_dir=str(dev_dir / "empty-cache"))
    with pytest.raises(DevStackError, match=r"`mvn` \(Apache Maven\) is not on PATH"):
        await DevStack(empty_cache, out=lambda line: None).up()
    assert not any((dev_dir / name).exists() for name in ("kafka", "redis", "postgres"))
