"""The emitter's tuning knobs, shared by ``Emitter`` and ``SyncEmitter``.

Connection, topic and size limits come from :class:`~resultlog.settings.Settings`; these
are per-emitter choices. The defaults are the ones measured best by
``bench/emit_throughput.py`` (see ``docs/emitter.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from resultlog.errors import ConfigurationError
from resultlog.producers.kafka import Compression, ProducerConfig
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
    """Validated pipeline options; unknown or bad values are a ConfigurationError."""
    unknown = options.keys() - EmitterOptions.__annotations__.keys()
    if unknown:
        known = ", ".join(sorted(EmitterOptions.__annotations__))
        raise ConfigurationError(f"unknown emitter option(s) {', '.join(sorted(unknown))}; known: {known}")
    opts = PipelineOptions(
        producer=ProducerConfig(
            compression_type=options.get("compression_type", DEFAULT_COMPRESSION),
            max_batch_bytes=options.get("max_batch_bytes", DEFAULT_MAX_BATCH_BYTES),
            client_id=options.get("client_id", "resultlog-emitter"),
        ),
        linger_s=options.get("linger_ms", DEFAULT_LINGER_MS) / 1000,
        max_buffered_events=options.get("max_buffered_events", DEFAULT_MAX_BUFFERED_EVENTS),
        max_buffered_bytes=options.get("max_buffered_bytes", DEFAULT_MAX_BUFFERED_BYTES),
        buffer_timeout_s=options.get("buffer_timeout_s", settings.kafka_timeout_s),
        close_timeout_s=options.get("close_timeout_s", DEFAULT_CLOSE_TIMEOUT_S),
        create_topics=options.get("create_topics", True),
        read_your_writes=options.get("read_your_writes", False),
    )
    for name in ("max_buffered_events", "max_buffered_bytes"):
        if getattr(opts, name) < 1:
            raise ConfigurationError(f"emitter option {name} must be at least 1")
    for name in ("create_topics", "read_your_writes"):
        if not isinstance(getattr(opts, name), bool):
            raise ConfigurationError(f"emitter option {name} must be True or False, "
                                     f"not {getattr(opts, name)!r}")
    for name in ("linger_s", "buffer_timeout_s", "close_timeout_s"):
        if getattr(opts, name) < 0:
            raise ConfigurationError(f"emitter option {name} must not be negative")
    return opts
