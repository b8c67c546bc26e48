"""Typed settings, read from the environment (prefix ``RESULTLOG_``).

Defaults point at the local development stack (``resultlog dev up``). An unknown
``RESULTLOG_*`` variable or a malformed value is a :class:`ConfigurationError` that
names it: a typo must never silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from resultlog import names
from resultlog.errors import ConfigurationError

ENV_PREFIX = "RESULTLOG_"

# Local stack ports: unusual numbers so a system Redis/Postgres/Kafka never clashes.
DEV_KAFKA_PORT = 19092
DEV_REDIS_PORT = 16379
DEV_POSTGRES_PORT = 15432
# How many Kafka nodes the local stack can run (RESULTLOG_DEV_KAFKA_BROKERS).
DEV_KAFKA_BROKER_COUNTS = (1, 3)

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_HOOK_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def _default_dev_dir() -> str:
    # State (data and logs) of `resultlog dev up`. As root, PostgreSQL runs as the
    # `postgres` user, which cannot enter /root (mode 700): use /var/tmp instead.
    if os.geteuid() == 0:
        return "/var/tmp/resultlog"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "resultlog")


def _default_dev_cache_dir() -> str:
    # Downloads the local stack can rebuild (the Kafka jars), kept apart from its state.
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "resultlog")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything resultlog can be configured with; all fields have safe defaults."""

    # Kafka
    kafka_bootstrap_servers: str = f"127.0.0.1:{DEV_KAFKA_PORT}"
    events_topic: str = names.DEFAULT_EVENTS_TOPIC
    topic_partitions: int = 8
    topic_replication_factor: int = 1
    # min.insync.replicas of the topics resultlog creates; 0 leaves the broker's default.
    # With acks=all, a write is acknowledged once this many replicas hold it.
    topic_min_insync_replicas: int = 0
    # The log is the source of truth: keep it forever unless told otherwise.
    topic_retention_ms: int = -1
    consumer_group: str = names.DEFAULT_CONSUMER_GROUP
    kafka_timeout_s: float = 10.0
    # How long the processor keeps retrying stores that do not answer while it positions
    # newly assigned partitions, before it stops with the reason (its supervisor
    # restarts it; it could fold nothing meanwhile anyway).
    assign_timeout_s: float = 60.0
    # The largest encoded event the emitter accepts; topics are created to take it
    # (producers/topics.py). A SUCCESS over it is refused at the call; a FAILURE, RETRY
    # or REVOKED is recorded with its large fields cut instead (producers/fitting.py).
    max_event_bytes: int = 1_000_000
    # Run once per completed chord by the processor: "package.module:function" taking a
    # ChordCompleted (sync or async); empty for none. See docs/chords.md.
    chord_hook: str = ""
    # Redis
    redis_url: str = f"redis://127.0.0.1:{DEV_REDIS_PORT}/0"
    redis_prefix: str = names.DEFAULT_REDIS_PREFIX
    # Like Celery's result_expires: one day. 0 means results never expire.
    result_ttl_s: int = 86_400
    # PostgreSQL
    postgres_dsn: str = (
        f"postgresql://resultlog:resultlog@127.0.0.1:{DEV_POSTGRES_PORT}/resultlog"
    )
    postgres_schema: str = names.DEFAULT_PG_SCHEMA
    # Metrics and health: `resultlog process` serves /metrics, /health/live and
    # /health/ready on metrics_host:metrics_port (docs/operations.md). Off by default
    # (0): several processors on one host would otherwise fight over one port.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    # Ready once assigned and every partition is within this many offsets of the log's end.
    ready_max_lag: int = 10_000
    # Local development stack and tests
    dev_dir: str = field(default_factory=_default_dev_dir)
    dev_cache_dir: str = field(default_factory=_default_dev_cache_dir)
    # Kafka nodes of the local stack: 1 (the default) or 3 (a KRaft quorum of 3 voters).
    dev_kafka_brokers: int = 1
    test_services: str = "auto"

    def __post_init__(self) -> None:
        _check(self)

    @property
    def dead_letter_topic(self) -> str:
        return names.dead_letter_topic(self.events_topic)

    @property
    def chords_topic(self) -> str:
        return names.chords_topic(self.events_topic)

    @property
    def chord_completions_topic(self) -> str:
        return names.chord_completions_topic(self.events_topic)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``RESULTLOG_*`` variables, then keyword overrides."""
        env = os.environ if env is None else env
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for var, raw in env.items():
            if not var.startswith(ENV_PREFIX):
                continue
            name = var[len(ENV_PREFIX):].lower()
            if name not in known:
                close = ", ".join(sorted(known))
                raise ConfigurationError(
                    f"unknown setting {var}; known settings are RESULTLOG_ + one of: {close}"
                )
            values[name] = _parse(var, raw, known[name].type)
        for name in overrides:
            if name not in known:
                raise ConfigurationError(f"unknown setting {name!r}")
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """These settings as ``RESULTLOG_*`` variables (to hand to a child process)."""
        return {ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}


def _parse(var: str, raw: str, type_name: Any) -> Any:
    kind = type_name if isinstance(type_name, str) else type_name.__name__
    try:
        if kind == "int":
            return int(raw.replace("_", ""))
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigurationError(f"{var}={raw!r} is not a valid {kind}") from None
    return raw


def _check(s: Settings) -> None:
    def bad(name: str, why: str) -> ConfigurationError:
        return ConfigurationError(
            f"setting {name} = {getattr(s, name)!r} is invalid: {why} "
            f"(set RESULTLOG_{name.upper()})"
        )

    for name in ("kafka_bootstrap_servers",):
        for hostport in s.kafka_bootstrap_servers.split(","):
            host, _, port = hostport.strip().rpartition(":")
            if not host or not port.isdigit():
                raise bad(name, "expected host:port[,host:port...]")
    if not _TOPIC_RE.match(s.events_topic) or len(s.events_topic) > 180:
        raise bad("events_topic", "a Kafka topic name: letters, digits, '.', '_', '-'")
    if not 1 <= s.topic_partitions <= 10_000:
        raise bad("topic_partitions", "must be between 1 and 10000")
    if s.topic_replication_factor < 1:
        raise bad("topic_replication_factor", "must be at least 1")
    if not 0 <= s.topic_min_insync_replicas <= s.topic_replication_factor:
        raise bad(
            "topic_min_insync_replicas",
            f"0 (the broker's default) or 1 to topic_replication_factor "
            f"({s.topic_replication_factor}): more in-sync replicas than replicas would "
            f"refuse every acks=all write",
        )
    if s.topic_retention_ms < -1 or s.topic_retention_ms == 0:
        raise bad("topic_retention_ms", "-1 (forever) or a positive number of ms")
    if not s.consumer_group:
        raise bad("consumer_group", "must not be empty")
    if s.kafka_timeout_s <= 0:
        raise bad("kafka_timeout_s", "must be positive")
    if s.assign_timeout_s <= 0:
        raise bad("assign_timeout_s", "must be positive")
    if not 1024 <= s.max_event_bytes <= 100_000_000:
        raise bad("max_event_bytes", "must be between 1024 and 100000000")
    if urlsplit(s.redis_url).scheme not in ("redis", "rediss", "unix"):
        raise bad("redis_url", "expected redis://host:port/db")
    if not s.redis_prefix or any(c.isspace() for c in s.redis_prefix):
        raise bad("redis_prefix", "must be non-empty, without spaces")
    if s.result_ttl_s < 0:
        raise bad("result_ttl_s", "seconds >= 0 (0 means never expire)")
    if urlsplit(s.postgres_dsn).scheme not in ("postgres", "postgresql"):
        raise bad("postgres_dsn", "expected postgresql://user:password@host:port/db")
    if not _IDENT_RE.match(s.postgres_schema):
        raise bad("postgres_schema", "a lower-case SQL identifier")
    if s.chord_hook and not _HOOK_RE.match(s.chord_hook):
        raise bad("chord_hook", "empty, or package.module:function")
    if not 0 <= s.metrics_port <= 65535:
        raise bad("metrics_port", "0 (off) or a TCP port, 1 to 65535")
    if not s.metrics_host or any(c.isspace() for c in s.metrics_host):
        raise bad("metrics_host", "an address to bind, e.g. 127.0.0.1, or 0.0.0.0 for every interface")
    if s.ready_max_lag < 0:
        raise bad("ready_max_lag", "offsets >= 0")
    if s.dev_kafka_brokers not in DEV_KAFKA_BROKER_COUNTS:
        raise bad(
            "dev_kafka_brokers",
            "1 (one node) or 3 (three nodes, a KRaft quorum that survives losing one)",
        )
    if s.test_services not in ("auto", "local", "docker", "env"):
        raise bad("test_services", "one of auto, local, docker, env")


def port_of(url_or_hostport: str, default: int) -> int:
    """The port named by a URL or ``host:port`` string (first one if several)."""
    first = url_or_hostport.split(",")[0].strip()
    if "://" in first:
        return urlsplit(first).port or default
    _, _, port = first.rpartition(":")
    return int(port) if port.isdigit() else default
