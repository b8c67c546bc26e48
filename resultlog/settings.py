"""Typed settings, read from the environment (prefix ``RESULTLOG_``).

Defaults point at the local development stack (``resultlog dev up``). An unknown
``RESULTLOG_*`` variable or a malformed value is a :class:`ConfigurationError` that
names it: a typo must never silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit

from resultlog import names
from resultlog.errors import ConfigurationError
from resultlog.redaction import MASK, redact_url

ENV_PREFIX = "RESULTLOG_"

# Local stack ports: unusual numbers so a system Redis/Postgres/Kafka never clashes.
DEV_KAFKA_PORT = 19092
DEV_REDIS_PORT = 16379
DEV_POSTGRES_PORT = 15432
# The history and chord bodies lag the log by up to the processor's linger: a second
# bounds that lag, and a batch of a second's events is already large at any rate
# worth lingering for (the saving is in batches of one becoming batches of tens).
MAX_PROCESSOR_LINGER_MS = 1000
# How many Kafka nodes the local stack can run (RESULTLOG_DEV_KAFKA_BROKERS).
DEV_KAFKA_BROKER_COUNTS = (1, 3)

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Kafka's own names and values (security.protocol, sasl.mechanism): see docs/operations.md.
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# ssl.endpoint.identification.algorithm: "none" is librdkafka's off, "" the Java client's.
KAFKA_ENDPOINT_IDENTIFICATION = ("https", "none", "")
# libpq's sslmode values (asyncpg takes them in the DSN's query).
POSTGRES_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Settings whose value is a secret: never printed.
SECRET_SETTINGS = frozenset({"kafka_sasl_password", "kafka_ssl_key_password"})
# Settings that are URLs which may hold a password: printed redacted.
URL_SETTINGS = frozenset({"redis_url", "postgres_dsn"})

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
    # Security, with Kafka's own names (docs/operations.md, "Kafka: Kafka's own names"),
    # for every Kafka client resultlog makes (resultlog/connections.py).
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_ssl_ca_location: str = ""
    kafka_ssl_certificate_location: str = ""
    kafka_ssl_key_location: str = ""
    kafka_ssl_key_password: str = field(default="", repr=False)
    kafka_ssl_endpoint_identification_algorithm: str = "https"
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
    # Redis. TLS and ACL users go in the URL, with redis-py's names (docs/operations.md).
    redis_url: str = f"redis://127.0.0.1:{DEV_REDIS_PORT}/0"
    redis_prefix: str = names.DEFAULT_REDIS_PREFIX
    # How long Redis may take to answer a command (or accept a connection) before it is
    # unavailable (StoreUnavailable): a paused or swapping Redis answers no error, and a
    # reader with a timeout of its own must not wait for it past that.
    redis_timeout_s: float = 3.0
    # Like Celery's result_expires: one day. 0 means results never expire.
    result_ttl_s: int = 86_400
    # PostgreSQL. TLS goes in the DSN, with libpq's names (docs/operations.md).
    postgres_dsn: str = (
        f"postgresql://resultlog:resultlog@127.0.0.1:{DEV_POSTGRES_PORT}/resultlog"
    )
    postgres_schema: str = names.DEFAULT_PG_SCHEMA
    # Metrics and health of `resultlog process` (docs/operations.md); off by default (0):
    # several processors on one host would otherwise fight over one port.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    # Ready once assigned and every partition is within this many offsets of the log's end.
    ready_max_lag: int = 10_000
    # How long the processor's fetch may wait for more events at low rates, so that a
    # batch folds many events instead of one (docs/processor.md, "Processor linger").
    # 0 folds every event as soon as it is in the log; a backlog is read at once anyway.
    processor_linger_ms: int = 0
    # Local development stack and tests
    dev_dir: str = field(default_factory=_default_dev_dir)
    dev_cache_dir: str = field(default_factory=_default_dev_cache_dir)
    # Kafka nodes of the local stack: 1 (the default) or 3 (a KRaft quorum of 3 voters).
    dev_kafka_brokers: int = 1
    test_services: str = "auto"

    def __post_init__(self) -> None:
        _check(self)

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={self.display(f.name)}" for f in fields(self))
        return f"Settings({shown})"

    def display(self, name: str) -> str:
        """The setting ``name`` as it may be printed: secrets masked, URLs redacted."""
        value = getattr(self, name)
        if name in SECRET_SETTINGS:
            return repr(MASK if value else "")
        if name in URL_SETTINGS:
            return repr(redact_url(value))
        return repr(value)

    @property
    def kafka_uses_ssl(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")

    @property
    def kafka_uses_sasl(self) -> bool:
        return self.kafka_security_protocol.startswith("SASL_")

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

    @classmethod
    def given(cls, settings: Settings | None, owner: str) -> Settings:
        """What an entry point taking ``settings=None`` uses: ``settings``, or the
        ``RESULTLOG_*`` variables' when None. Anything else (a URL string is the usual
        slip) is a ConfigurationError naming ``owner`` here, not an AttributeError at
        first use."""
        if settings is None:
            return cls.from_env()
        if not isinstance(settings, cls):
            raise ConfigurationError(
                f"{owner}: settings must be resultlog Settings (Settings(...) or "
                f"Settings.from_env()), or None for the RESULTLOG_* variables; got "
                f"{type(settings).__name__} {settings!r}")
        return settings

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
            f"setting {name} = {s.display(name)} is invalid: {why} "
            f"(set RESULTLOG_{name.upper()})"
        )

    for f in fields(s):
        # Settings made in code skip _parse: a value of the wrong type would otherwise fail
        # far from here (a port as a str, a URL as an int), and NaN passes every bound.
        value = getattr(s, f.name)
        kind = str(f.type)
        wanted = {"str": (str,), "int": (int,), "float": (int, float)}[kind]
        if isinstance(value, bool) or not isinstance(value, wanted):
            raise ConfigurationError(f"setting {f.name} must be {'an' if kind == 'int' else 'a'} "
                                     f"{kind}, not {type(value).__name__} "
                                     f"(set RESULTLOG_{f.name.upper()})")
        if kind == "float" and not math.isfinite(getattr(s, f.name)):
            raise bad(f.name, "must be a finite number")
    for hostport in s.kafka_bootstrap_servers.split(","):
        host, _, port = hostport.strip().rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise bad("kafka_bootstrap_servers", "expected host:port[,host:port...], each port "
                                                 "from 1 to 65535")
    if not _TOPIC_RE.match(s.events_topic) or len(s.events_topic) > 180 or s.events_topic in (".", ".."):
        raise bad("events_topic", "a Kafka topic name: letters, digits, '.', '_', '-' (not '.' or '..')")
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
    if s.redis_timeout_s <= 0:
        raise bad("redis_timeout_s", "must be positive")
    if not 1024 <= s.max_event_bytes <= 100_000_000:
        raise bad("max_event_bytes", "must be between 1024 and 100000000")
    _check_kafka_security(s, bad)
    redis = urlsplit(s.redis_url)
    if redis.scheme not in ("redis", "rediss", "unix"):
        raise bad("redis_url", "expected redis://host:port/db (rediss:// for TLS)")
    if not _port_is_valid(redis) or (redis.scheme != "unix"
                                     and redis.path.strip("/") and not redis.path.strip("/").isdigit()):
        raise bad("redis_url", "expected redis://host:port/db, a port from 1 to 65535 and a "
                               "database number")
    tls_params = sorted(k for k, _ in parse_qsl(redis.query) if k.startswith("ssl_"))
    if tls_params and redis.scheme != "rediss":
        raise bad("redis_url", f"{', '.join(tls_params)} only apply to TLS: use rediss://")
    if not s.redis_prefix or any(c.isspace() for c in s.redis_prefix):
        raise bad("redis_prefix", "must be non-empty, without spaces")
    if s.result_ttl_s < 0:
        raise bad("result_ttl_s", "seconds >= 0 (0 means never expire)")
    pg = urlsplit(s.postgres_dsn)
    if pg.scheme not in ("postgres", "postgresql"):
        raise bad("postgres_dsn", "expected postgresql://user:password@host:port/db")
    if "," not in pg.netloc and not _port_is_valid(pg):  # libpq's host1:p1,host2:p2 aside
        raise bad("postgres_dsn", "the port must be a number from 1 to 65535")
    sslmode = dict(parse_qsl(pg.query)).get("sslmode")
    if sslmode is not None and sslmode not in POSTGRES_SSLMODES:
        raise bad("postgres_dsn", f"sslmode={sslmode!r} is not one of {', '.join(POSTGRES_SSLMODES)}")
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
    if not 0 <= s.processor_linger_ms <= MAX_PROCESSOR_LINGER_MS:
        raise bad("processor_linger_ms",
                  f"milliseconds from 0 (fold at once) to {MAX_PROCESSOR_LINGER_MS}")
    if s.dev_kafka_brokers not in DEV_KAFKA_BROKER_COUNTS:
        raise bad(
            "dev_kafka_brokers",
            "1 (one node) or 3 (three nodes, a KRaft quorum that survives losing one)",
        )
    if s.test_services not in ("auto", "local", "docker", "env"):
        raise bad("test_services", "one of auto, local, docker, env")


def _port_is_valid(url: SplitResult) -> bool:
    """Whether the URL's port, if it names one, is a number from 1 to 65535."""
    try:
        port = url.port  # ValueError: not a number, or out of range
    except ValueError:
        return False
    return port != 0


def _check_kafka_security(s: Settings, bad: Callable[[str, str], ConfigurationError]) -> None:
    if s.kafka_security_protocol not in KAFKA_SECURITY_PROTOCOLS:
        raise bad("kafka_security_protocol", f"one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}")
    if s.kafka_uses_sasl:
        if s.kafka_sasl_mechanism not in KAFKA_SASL_MECHANISMS:
            raise bad("kafka_sasl_mechanism", f"one of {', '.join(KAFKA_SASL_MECHANISMS)}")
        for name in ("kafka_sasl_username", "kafka_sasl_password"):
            if not getattr(s, name):
                raise bad(name, f"required with security.protocol {s.kafka_security_protocol}")
    else:
        # A credential that would be ignored is a mistake in the other setting.
        for name in ("kafka_sasl_username", "kafka_sasl_password"):
            if getattr(s, name):
                raise bad(name, f"SASL credentials need kafka_security_protocol SASL_SSL or "
                                f"SASL_PLAINTEXT, not {s.kafka_security_protocol}")
    tls_files = ("kafka_ssl_ca_location", "kafka_ssl_certificate_location",
                 "kafka_ssl_key_location", "kafka_ssl_key_password")
    if not s.kafka_uses_ssl:
        for name in tls_files:
            if getattr(s, name):
                raise bad(name, f"TLS settings need kafka_security_protocol SSL or SASL_SSL, "
                                f"not {s.kafka_security_protocol}")
    if bool(s.kafka_ssl_certificate_location) != bool(s.kafka_ssl_key_location):
        name = "kafka_ssl_key_location" if s.kafka_ssl_certificate_location else "kafka_ssl_certificate_location"
        raise bad(name, "a client certificate needs both kafka_ssl_certificate_location and "
                        "kafka_ssl_key_location")
    if s.kafka_ssl_key_password and not s.kafka_ssl_key_location:
        raise bad("kafka_ssl_key_password", "a key password needs kafka_ssl_key_location")
    if s.kafka_ssl_endpoint_identification_algorithm not in KAFKA_ENDPOINT_IDENTIFICATION:
        raise bad("kafka_ssl_endpoint_identification_algorithm",
                  "https (check the broker's host name) or none")


def port_of(url_or_hostport: str, default: int) -> int:
    """The port named by a URL or ``host:port`` string (first one if several)."""
    first = url_or_hostport.split(",")[0].strip()
    if "://" in first:
        return urlsplit(first).port or default
    _, _, port = first.rpartition(":")
    return int(port) if port.isdigit() else default
