"""The same three services as throw-away Docker containers (testcontainers), for tests.

Used by ``tests/conftest.py`` when ``RESULTLOG_TEST_SERVICES=docker``; the images are
the versions of the local stack and docker-compose.yml. Each container gets free host
ports, so it never collides with a running local stack. Kafka must advertise the
address clients use, so its broker listens inside the container on the very port it
is published on.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from resultlog.devstack.kafka import KAFKA_VERSION, KafkaService, broker_config
from resultlog.devstack.kafka_nodes import random_cluster_id
from resultlog.devstack.postgres import MAJOR as POSTGRES_MAJOR
from resultlog.devstack.postgres import PostgresService
from resultlog.devstack.process import free_port
from resultlog.devstack.redis import RedisService
from resultlog.devstack.service import Service
from resultlog.errors import DevStackError
from resultlog.settings import Settings

KAFKA_IMAGE = f"apache/kafka:{KAFKA_VERSION}"
REDIS_IMAGE = "redis:7.0"
POSTGRES_IMAGE = f"postgres:{POSTGRES_MAJOR}"
START_TIMEOUT_S = 180.0


def docker_unavailable() -> str | None:
    """None if a Docker engine answers, else why not."""
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError:
        return "the `docker` package is not installed (pip install 'resultlog[docker]')"
    try:
        client = docker.from_env()
    except Exception as exc:  # docker raises DockerException, or plain errors
        return f"no Docker engine: {exc}"
    try:
        client.ping()
    except Exception as exc:
        return f"the Docker engine does not answer: {exc}"
    finally:
        client.close()
    return None


def _kafka_env(port: int) -> dict[str, str]:
    config = broker_config(port=port, controller_port=9093, data_dir=Path("/unused"))
    del config["log.dirs"]  # the image's own data directory
    config["listeners"] = f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://localhost:9093"
    config["controller.quorum.voters"] = "1@localhost:9093"
    # The apache/kafka image maps KAFKA_FOO_BAR to foo.bar.
    env = {"KAFKA_" + key.upper().replace(".", "_"): value for key, value in config.items()}
    env["CLUSTER_ID"] = random_cluster_id()
    return env


class ContainerStack:
    """Start Kafka, Redis and PostgreSQL containers; ``stop()`` removes them."""

    def __init__(self, base: Settings) -> None:
        self.base = base
        self.containers: list[Any] = []

    async def start(self) -> Settings:
        """Start the containers and wait until each answers; settings that point at them."""
        try:
            settings = await asyncio.to_thread(self._run_containers)
            await self._wait(settings)
        except BaseException:
            self.stop()
            raise
        return settings

    def _run_containers(self) -> Settings:
        from testcontainers.core.container import DockerContainer

        dsn = urlsplit(self.base.postgres_dsn)
        user = unquote(dsn.username or "resultlog")
        password = unquote(dsn.password or "resultlog")
        database = unquote(dsn.path.lstrip("/")) or user

        kafka_port = free_port()
        kafka = DockerContainer(KAFKA_IMAGE).with_bind_ports(kafka_port, kafka_port)
        for key, value in _kafka_env(kafka_port).items():
            kafka = kafka.with_env(key, value)
        redis = DockerContainer(REDIS_IMAGE).with_exposed_ports(6379).with_command(
            ["redis-server", "--save", "", "--appendonly", "no"]
        )
        postgres = (
            DockerContainer(POSTGRES_IMAGE)
            .with_exposed_ports(5432)
            .with_env("POSTGRES_USER", user)
            .with_env("POSTGRES_PASSWORD", password)
            .with_env("POSTGRES_DB", database)
        )
        for container in (kafka, redis, postgres):
            container.start()
            self.containers.append(container)
        host = redis.get_container_host_ip()
        return self.base.replace(
            kafka_bootstrap_servers=f"127.0.0.1:{kafka_port}",
            redis_url=f"redis://{host}:{redis.get_exposed_port(6379)}/0",
            postgres_dsn=(
                f"postgresql://{user}:{password}@{postgres.get_container_host_ip()}:"
                f"{postgres.get_exposed_port(5432)}/{database}"
            ),
        )

    async def _wait(self, settings: Settings) -> None:
        probes: list[Service] = [
            KafkaService(settings, lambda _: None),
            RedisService(settings, lambda _: None),
            PostgresService(settings, lambda _: None),
        ]
        deadline = time.monotonic() + START_TIMEOUT_S
        for svc in probes:
            while not await svc.answers():
                if time.monotonic() > deadline:
                    raise DevStackError(
                        f"the {svc.name} container did not answer within {START_TIMEOUT_S:.0f} s"
                    )
                await asyncio.sleep(0.5)

    def stop(self) -> None:
        while self.containers:
            container = self.containers.pop()
            try:
                container.stop()
            except Exception:  # best effort: the engine may be gone already
                pass
