"""Avro single-object encoding of events, with a local store of every schema version.

Framing (Avro specification, "Single-object encoding"): ``C3 01``, then the 8-byte
little-endian CRC-64-AVRO fingerprint of the writer schema's parsing canonical form,
then the Avro binary body. A reader looks the fingerprint up in its store and resolves
the writer schema against its own (latest, or pinned) version of the same record, so
events written under any kept version stay readable and fields a reader does not know
are skipped.

Every ``schemas/avro/<name>.v<N>.avsc`` is loaded; never edit or delete one, add a new
version instead.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as avro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from resultlog.errors import CodecError, EventTooLarge, UnknownSchema, ValidationError
from resultlog.schemas import taskcodec
from resultlog.schemas.event import ExceptionInfo, TaskEvent
from resultlog.schemas.states import State

MAGIC = b"\xc3\x01"
HEADER_SIZE = 10
SCHEMA_DIR = Path(__file__).with_name("avro")
TASK_EVENT = "io.resultlog.TaskEvent"
# A forget: read back as a TaskEvent of state FORGOTTEN (see task_forgotten.v1.avsc).
# Its own record type, so that the TaskEvent enum, and the fast readers and writers of
# TaskEvent, stay as they are.
TASK_FORGOTTEN = "io.resultlog.TaskForgotten"
# Records about chords that share the events topic with task events (keyed by chord id).
CHORD_DECLARED = "io.resultlog.ChordDeclared"
# A step of Celery's chord protocol (set_chord_size, add_to_chord, on_chord_part_return).
CELERY_CHORD = "io.resultlog.CeleryChord"
CHORD_RECORDS = frozenset({CHORD_DECLARED, CELERY_CHORD})
# Worker heartbeats share the events topic too (keyed by worker id): schemas/workers.py.
WORKER_HEARTBEAT = "io.resultlog.WorkerHeartbeat"
# Written by the chord aggregator to the chord-completions topic (never the events topic).
CHORD_COMPLETED = "io.resultlog.ChordCompleted"
_FILE_RE = re.compile(r"^(?P<stem>[a-z0-9_]+)\.v(?P<version>\d+)\.avsc$")


def crc64_avro(data: bytes) -> int:
    """The Rabin fingerprint the Avro specification names CRC-64-AVRO (fastavro's; its hex
    is of the little-endian bytes)."""
    return int.from_bytes(bytes.fromhex(avro_fingerprint(data.decode(), "CRC-64-AVRO")), "little")


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    name: str  # full name, e.g. io.resultlog.TaskEvent
    version: int
    parsed: Any
    fingerprint: bytes  # 8 bytes, little-endian, as framed

    @property
    def header(self) -> bytes:
        return MAGIC + self.fingerprint


class SchemaStore:
    """Every known schema version, by fingerprint and by (name, version)."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR) -> None:
        self._by_fp: dict[bytes, SchemaVersion] = {}
        self._by_name: dict[str, dict[int, SchemaVersion]] = {}
        for path in sorted(schema_dir.glob("*.avsc")):
            match = _FILE_RE.match(path.name)
            if match is None:
                raise CodecError(f"schema file {path} is not named <name>.v<N>.avsc")
            self.add(json.loads(path.read_text()), int(match["version"]))

    def add(self, schema: Mapping[str, Any], version: int) -> SchemaVersion:
        parsed = parse_schema(dict(schema))
        if not isinstance(parsed, dict) or "name" not in parsed:
            raise CodecError(f"schema version {version} is not a named Avro record")
        canonical = to_parsing_canonical_form(parsed)
        fingerprint = crc64_avro(canonical.encode()).to_bytes(8, "little")
        name = str(parsed["name"])
        entry = SchemaVersion(name, version, parsed, fingerprint)
        self._by_fp[fingerprint] = entry
        self._by_name.setdefault(name, {})[version] = entry
        return entry

    def latest(self, name: str) -> SchemaVersion:
        versions = self._by_name.get(name)
        if not versions:
            raise UnknownSchema(f"no schema named {name} in the schema store")
        return versions[max(versions)]

    def get(self, name: str, version: int) -> SchemaVersion:
        try:
            return self._by_name[name][version]
        except KeyError:
            raise UnknownSchema(f"no version {version} of schema {name}") from None

    def by_fingerprint(self, fingerprint: bytes) -> SchemaVersion:
        try:
            return self._by_fp[fingerprint]
        except KeyError:
            raise UnknownSchema(
                f"unknown writer schema fingerprint {fingerprint.hex()}; the event was "
                "written with a schema version this reader does not have (upgrade resultlog)"
            ) from None

    def versions(self, name: str) -> Iterable[SchemaVersion]:
        return [v for _, v in sorted(self._by_name.get(name, {}).items())]


class Codec:
    """Encodes and decodes framed Avro records; ``pin`` simulates an older reader."""

    def __init__(
        self,
        store: SchemaStore | None = None,
        *,
        max_bytes: int = 1_000_000,
        pin: Mapping[str, int] | None = None,
    ) -> None:
        self.store = store or default_store()
        self.max_bytes = max_bytes
        self._pin = dict(pin or {})
        # The generated reader applies only when the writer's TaskEvent version is the
        # reader's (no resolution needed).
        reader = self.schema_for(TASK_EVENT)
        self._fast_fp: bytes | None = None
        self._read_event: Callable[[bytes, int], TaskEvent] | None = None
        try:
            self._read_event = taskcodec.make_reader(reader.parsed)
            self._fast_fp = reader.fingerprint
        except taskcodec.Unsupported:
            pass

    def task_event_writer(self) -> Callable[[TaskEvent], bytes] | None:
        """The generated writer of the TaskEvent version this codec writes (header
        included), or None when that schema has none (see schemas/taskcodec.py)."""
        schema = self.schema_for(TASK_EVENT)
        try:
            return taskcodec.make_writer(schema.parsed, schema.header)
        except taskcodec.Unsupported:
            return None

    def schema_for(self, name: str) -> SchemaVersion:
        """The version this codec writes and reads ``name`` as."""
        if name in self._pin:
            return self.store.get(name, self._pin[name])
        return self.store.latest(name)

    # Generic records ---------------------------------------------------------------
    def encode_record(self, name: str, record: Mapping[str, Any]) -> bytes:
        schema = self.schema_for(name)
        buf = io.BytesIO()
        buf.write(schema.header)
        try:
            schemaless_writer(buf, schema.parsed, record)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ValidationError(f"record does not fit schema {name}: {exc}") from None
        data = buf.getvalue()
        if len(data) > self.max_bytes:
            raise EventTooLarge(
                f"encoded {name} is {len(data)} bytes, over the {self.max_bytes}-byte limit "
                "(RESULTLOG_MAX_EVENT_BYTES); raise the setting, or store large results "
                "elsewhere and emit a reference",
                size=len(data),
                limit=self.max_bytes,
            )
        return data

    def decode_record(self, data: bytes) -> tuple[str, dict[str, Any]]:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CodecError(f"expected bytes, got {type(data).__name__}")
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise CodecError(
                "not an Avro single-object encoded record (missing C3 01 header)"
            )
        writer = self.store.by_fingerprint(bytes(data[2:HEADER_SIZE]))
        reader = self.schema_for(writer.name)
        body = io.BytesIO(data[HEADER_SIZE:])
        try:
            record = schemaless_reader(body, writer.parsed,
                                       None if reader is writer else reader.parsed)
        except Exception as exc:  # fastavro raises many kinds on corrupt bodies
            raise CodecError(f"corrupt {writer.name} v{writer.version} body: {exc!r}") from None
        if not isinstance(record, dict):
            raise CodecError(f"{writer.name} did not decode to a record")
        if body.tell() != len(data) - HEADER_SIZE:
            raise CodecError(
                f"corrupt {writer.name} v{writer.version} body: "
                f"{len(data) - HEADER_SIZE - body.tell()} trailing byte(s)")
        return writer.name, record

    def decode_expected(self, data: bytes, name: str) -> dict[str, Any]:
        """The record in ``data``, which must be of schema ``name`` (CodecError if not)."""
        found, record = self.decode_record(data)
        if found != name:
            raise CodecError(f"expected a {name}, got a {found}")
        return record

    # Task events ---------------------------------------------------------------------
    def encode(self, event: TaskEvent) -> bytes:
        # A forget's record has a subset of the fields (TaskEvent refuses any other).
        name = TASK_FORGOTTEN if event.state is State.FORGOTTEN else TASK_EVENT
        return self.encode_record(name, event_to_record(event))

    def decode_any(self, data: bytes) -> TaskEvent | tuple[str, dict[str, Any]]:
        """A task event (fast path when it applies), or ``(name, record)`` for any other
        record type sharing the topic."""
        read = self._read_event
        if read is not None and data[2:HEADER_SIZE] == self._fast_fp and data[:2] == MAGIC:
            try:
                return read(data, HEADER_SIZE)
            except Exception:  # noqa: BLE001 — the generic path raises the proper error
                pass
        name, record = self.decode_record(data)
        if name == TASK_EVENT:
            return event_from_record(record)
        if name == TASK_FORGOTTEN:
            return event_from_record(record | {"state": State.FORGOTTEN.value})
        return name, record

    def decode(self, data: bytes) -> TaskEvent:
        decoded = self.decode_any(data)
        if isinstance(decoded, TaskEvent):
            return decoded
        raise CodecError(f"expected a {TASK_EVENT}, got a {decoded[0]}")


_STATES = {s.value: s for s in State}


# The TaskEvent fields a TaskEvent record carries under the same name and as they are.
_REQUIRED = ("event_id", "task_id", "timestamp")
_OPTIONAL = tuple(f.name for f in fields(TaskEvent)
                  if f.name not in _REQUIRED + ("state", "exception", "attempt", "meta"))


def event_to_record(event: TaskEvent) -> dict[str, Any]:
    """The record of ``event``; a version's writer skips the fields it lacks."""
    record: dict[str, Any] = {name: getattr(event, name) for name in _REQUIRED + _OPTIONAL}
    exc = event.exception
    record.update(
        state=event.state.value, attempt=event.attempt, meta=dict(event.meta),
        exception=None if exc is None else {"type": exc.type, "module": exc.module,
                                            "message": exc.message})
    return record


def event_from_record(record: Mapping[str, Any]) -> TaskEvent:
    exc = record.get("exception")
    try:
        values: dict[str, Any] = {name: record[name] for name in _REQUIRED}
        values.update((name, record.get(name)) for name in _OPTIONAL)
        return TaskEvent(
            state=_STATES[record["state"]], attempt=record.get("attempt", 0),
            exception=None if exc is None else ExceptionInfo(exc["type"], exc["module"], exc["message"]),
            meta=record.get("meta") or {}, **values)
    except KeyError as exc:
        raise CodecError(f"record lacks required field {exc}") from None


_DEFAULT_STORE: SchemaStore | None = None


def default_store() -> SchemaStore:
    """The schema store of the installed schemas, loaded once."""
    global _DEFAULT_STORE
    if _DEFAULT_STORE is None:
        _DEFAULT_STORE = SchemaStore()
    return _DEFAULT_STORE
