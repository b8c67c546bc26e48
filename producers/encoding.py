"""A fast writer for the one record the emitter sends: ``TaskEvent``, schema version 2.

Why this exists: ``Codec.encode`` goes through fastavro's generic writer, about 10 µs per
event, half of the emitter's per-event budget at 50,000 events/s. This module writes the
same bytes directly (about 2.5 µs). It is not a second source of truth:

- it is used only while the codec writes ``io.resultlog.TaskEvent`` version 2, and only
  after a self-check at construction produced byte-identical output to the codec;
  otherwise every event goes through ``Codec.encode`` (slower, still correct);
- anything unusual (an int outside Avro's int range, a non-str meta value, text that
  cannot be UTF-8 encoded, an event over the size limit) is handed to ``Codec.encode``
  so that the codec raises its own error with its own message;
- ``tests/unit/test_emitter_encoding.py`` checks byte equality on generated events and
  fails when a newer schema version appears, so the fast path is updated with it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from resultlog.errors import ResultlogError
from resultlog.schemas.codec import TASK_EVENT, Codec
from resultlog.schemas.event import ExceptionInfo, TaskEvent
from resultlog.schemas.states import State

#: The schema version :func:`_write_v2` writes.
FAST_VERSION = 2

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_NULL = b"\x00"
_SOME = b"\x02"  # union branch 1 (the non-null type), zig-zag encoded
_pack_double = struct.Struct("<d").pack


def _varint(n: int) -> bytes:
    """Avro int/long: zig-zag, then little-endian base-128."""
    n = (n << 1) ^ (n >> 63)
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [_varint(i) for i in range(128)]
_ts_memo = (0, _varint(0))  # (timestamp, its encoding): a one-entry memo


def _string(s: str) -> bytes:
    b = s.encode()
    n = len(b)
    return (_SMALL[n] if n < 128 else _varint(n)) + b


def _opt_string(s: str | None) -> bytes:
    if s is None:
        return _NULL
    b = s.encode()
    n = len(b)
    return _SOME + (_SMALL[n] if n < 128 else _varint(n)) + b


def _opt_int(n: int | None) -> bytes:
    if n is None:
        return _NULL
    if not _INT32_MIN <= n <= _INT32_MAX:
        raise OverflowError(n)  # the codec reports it properly
    return _SOME + _varint(n)


def _opt_exception(exc: ExceptionInfo | None) -> bytes:
    if exc is None:
        return _NULL
    return _SOME + _string(exc.type) + _string(exc.module) + _string(exc.message)


def _write_v2(header: bytes, states: dict[State, bytes], e: TaskEvent) -> bytes:
    # Field order and types follow schemas/avro/task_event.v2.avsc exactly. Most
    # optional fields are None: test inline rather than pay a call for each.
    global _ts_memo
    ts = e.timestamp
    memo = _ts_memo  # one read of one tuple: consistent even across threads
    if memo[0] != ts:  # events come in bursts within the same millisecond
        memo = _ts_memo = (ts, _varint(ts))
    attempt = e.attempt
    parts = [
        header,
        _string(e.event_id),
        _string(e.task_id),
        states[e.state],
        memo[1],
        _NULL if e.task_name is None else _opt_string(e.task_name),
        _NULL if e.worker is None else _opt_string(e.worker),
        _SMALL[attempt] if 0 <= attempt < 128 else _varint(attempt),
        _NULL if e.args is None else _opt_string(e.args),
        _NULL if e.kwargs is None else _opt_string(e.kwargs),
        _NULL if e.result is None else _opt_string(e.result),
        _opt_exception(e.exception),
        _NULL if e.traceback is None else _opt_string(e.traceback),
        _NULL if e.runtime is None else _SOME + _pack_double(e.runtime),
        _NULL if e.parent_id is None else _opt_string(e.parent_id),
        _NULL if e.root_id is None else _opt_string(e.root_id),
        _NULL if e.group_id is None else _opt_string(e.group_id),
        _NULL if e.chord_id is None else _opt_string(e.chord_id),
        _opt_int(e.chord_size),
        _opt_int(e.chord_index),
        _NULL if e.eta is None else _SOME + _varint(e.eta),
    ]
    meta = e.meta
    if meta:
        # One block of len(meta) entries, then the empty block that ends a map.
        parts.append(_varint(len(meta)))
        for k, v in meta.items():
            parts.append(_string(k))
            parts.append(_string(v))
    parts.append(_NULL)
    return b"".join(parts)


def _sample() -> TaskEvent:
    return TaskEvent(
        event_id="0" * 32,
        task_id="self-check",
        state=State.FAILURE,
        timestamp=1_700_000_000_000,
        task_name="t",
        worker="w",
        attempt=3,
        args="[1]",
        kwargs='{"k":"é"}',
        exception=ExceptionInfo("ValueError", "builtins", "x" * 200),
        traceback="tb",
        runtime=0.25,
        parent_id="p",
        root_id="r",
        group_id="g",
        chord_id="c",
        chord_size=300,
        chord_index=299,
        eta=-5,
        meta={"trace": "abc"},
    )


class EventEncoder:
    """``encode(event) -> bytes``, equal to ``codec.encode(event)``, fast when it can be."""

    __slots__ = ("codec", "fast", "_encode")

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.fast = False
        self._encode: Callable[[TaskEvent], bytes] = codec.encode
        schema = codec.schema_for(TASK_EVENT)
        if schema.version != FAST_VERSION:
            return
        symbols = schema.parsed["fields"][2]["type"]["symbols"]
        states = {State(name): _SMALL[i] for i, name in enumerate(symbols)}
        header = schema.header
        max_bytes = codec.max_bytes

        def fast_encode(event: TaskEvent) -> bytes:
            try:
                data = _write_v2(header, states, event)
            except (AttributeError, TypeError, ValueError, KeyError, OverflowError):
                return codec.encode(event)  # raises the codec's own error
            if len(data) > max_bytes:
                return codec.encode(event)  # raises EventTooLarge, worded by the codec
            return data

        sample = _sample()
        try:
            agrees = _write_v2(header, states, sample) == codec.encode(sample)
        except (ResultlogError, ValueError, TypeError, KeyError, AttributeError):
            agrees = False
        if agrees:
            self._encode = fast_encode
            self.fast = True

    def encode(self, event: TaskEvent) -> bytes:
        return self._encode(event)
