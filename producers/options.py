"""The emitter's tuning knobs, shared by ``Emitter`` and ``SyncEmitter``.

Connection, topic and size limits come from :class:`~resultlog.settings.Settings`; these
are per-emitter choices. The defaults are the ones measured best by
``bench/emit_throughput.py`` (see ``docs/emitter.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from resultlog.errors import ConfigurationError, ValidationError
from resultlog.producers.kafka import Compression, ProducerConfig
from resultlog.schemas.event import validate_name
from resultlog.settings import Settings

# zstd: 5x fewer bytes on the wire and on disk for a log kept forever, for ~3 % of
# emit throughput (docs/emitter.md); cramjam, which aiokafka needs for it, is a dependency.
DEFAULT_COMPRESSION: Compression = "zstd"
DEFAULT_MAX_BATCH_BYTES = 512 * 1024
DEFAULT_LINGER_MS = 5.0
DEFAULT_MAX_BUFFERED_EVENTS = 100_000
DEFAULT_MAX_BUFFERED_BYTES = 64 * 1024 * 1024
DEFAULT_CLOSE_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class PipelineOptions:
    """Validated options, as the pipeline uses them."""

    producer: ProducerConfig
    linger_s: float
    max_buffered_events: int
    max_buffered_bytes: int
    buffer_timeout_s: float
    close_timeout_s: float
    create_topics: bool
    read_your_writes: bool


class EmitterOptions(TypedDict, total=False):
    """The keyword options of both emitters: their meaning and defaults are the table in
    docs/emitter.md, "Options"."""

    compression_type: Compression
    max_batch_bytes: int
    linger_ms: float
    max_buffered_events: int
    max_buffered_bytes: int
    buffer_timeout_s: float
    close_timeout_s: float
    create_topics: bool
    read_your_writes: bool
    client_id: str


def resolve(settings: Settings, options: EmitterOptions) -> PipelineOptions:
    """Validated pipeline options; unknown or bad values are a ConfigurationError that
    names the option as the caller spelled it."""
    unknown = options.keys() - EmitterOptions.__annotations__.keys()
    if unknown:
        known = ", ".join(sorted(EmitterOptions.__annotations__))
        raise ConfigurationError(f"unknown emitter option(s) {', '.join(sorted(unknown))}; known: {known}")
    given: Mapping[str, object] = options  # read by name below
    for name in ("create_topics", "read_your_writes"):
        if not isinstance(given.get(name, False), bool):
            raise ConfigurationError(f"emitter option {name} must be True or False, "
                                     f"not {given[name]!r}")
    client_id = options.get("client_id", "resultlog-emitter")
    if not isinstance(client_id, str) or not client_id:
        raise ConfigurationError(f"emitter option client_id must be a non-empty str, not {client_id!r}")
    return PipelineOptions(
        producer=ProducerConfig(
            compression_type=options.get("compression_type", DEFAULT_COMPRESSION),
            max_batch_bytes=_number(given, "max_batch_bytes", DEFAULT_MAX_BATCH_BYTES, 1, int),
            client_id=client_id,
        ),
        linger_s=_number(given, "linger_ms", DEFAULT_LINGER_MS, 0, float) / 1000,
        max_buffered_events=_number(given, "max_buffered_events", DEFAULT_MAX_BUFFERED_EVENTS, 1, int),
        max_buffered_bytes=_number(given, "max_buffered_bytes", DEFAULT_MAX_BUFFERED_BYTES, 1, int),
        buffer_timeout_s=_number(given, "buffer_timeout_s", settings.kafka_timeout_s, 0, float),
        close_timeout_s=_number(given, "close_timeout_s", DEFAULT_CLOSE_TIMEOUT_S, 0, float),
        create_topics=options.get("create_topics", True),
        read_your_writes=options.get("read_your_writes", False),
    )


def checked_worker(worker: object) -> str:
    """``worker``, the emitter's worker name, if events can carry it; else a
    ConfigurationError now rather than a ValidationError from every emit after."""
    if not isinstance(worker, str) or not worker or worker.isspace():
        raise ConfigurationError(f"emitter option worker must be a non-empty str (the name its "
                                 f"events carry; None: host:pid), not {worker!r:.60}")
    try:
        return validate_name("emitter option worker", worker)
    except ValidationError as exc:
        raise ConfigurationError(str(exc)) from None


def _number(options: Mapping[str, object], name: str, default: float, least: int, kind: type) -> Any:
    """``options[name]`` (``default`` when absent), checked to be a ``kind`` (int, or any
    real number for float) of at least ``least``. A bool is not a number here; NaN and
    infinity are refused (an infinite timeout overflows the waits that take it)."""
    value = options.get(name, default)
    kinds = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        what = "an int" if kind is int else "a finite number"
        raise ConfigurationError(f"emitter option {name} must be {what}, not {value!r}")
    if value < least:
        bound = "must not be negative" if least == 0 else f"must be at least {least}"
        raise ConfigurationError(f"emitter option {name} {bound}, not {value!r}")
    return value
