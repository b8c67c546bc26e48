"""The TaskEvent binary body, written and read by code generated from the schema.

:class:`resultlog.schemas.codec.Codec` frames and resolves every record type through
fastavro's generic reader and writer. Task events are most of the traffic, and the
generic route costs several times what the emitter and the processor may spend per
event, so for the TaskEvent version the codec writes and reads, this module turns the
``.avsc`` into straight-line Python at import time: one statement per field, in the
schema's field order, with the enum's symbols in the schema's order. A new schema
version gets its own generated code; a schema using a type this module does not know
gets none, and the codec then takes the generic route for it.

It is not a second source of truth: the generated writer is used only after it wrote a
sample byte-identical to fastavro's (:class:`EventEncoder`); the generated readers make
the caller take the generic route on anything they do not accept, so that the generic
route raises its own error; ``tests/unit/test_taskcodec.py`` checks both against
fastavro on generated events.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from resultlog.errors import ResultlogError
from resultlog.schemas.event import ExceptionInfo, TaskEvent
from resultlog.schemas.states import State

if TYPE_CHECKING:  # the codec imports this module
    from resultlog.schemas.codec import Codec

_INT32 = 2**31
_INT64 = 2**63
_NULL = b"\x00"
_SOME = b"\x02"  # union branch 1 (the non-null type), zig-zag encoded
_pack_double = struct.Struct("<d").pack
_unpack_double = struct.Struct("<d").unpack_from
# Record types the generated readers build, by full name (the fields are keywords).
_RECORD_CLASSES: dict[str, type] = {"io.resultlog.ExceptionInfo": ExceptionInfo}
# Enum types, by full name: the Python enum whose values are the symbols.
_ENUM_CLASSES: dict[str, type[State]] = {"io.resultlog.TaskState": State}


class Unsupported(Exception):
    """The schema uses a type the generator does not handle: use the generic route."""


class Declined(Exception):
    """A body the generated reader does not accept: the generic route decides."""


def varint(n: int) -> bytes:
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


_SMALL = [varint(i) for i in range(128)]


def read_long(data: bytes, pos: int) -> tuple[int, int]:
    """The Avro long (zig-zag varint, any length) at ``data[pos]``: (value, next position)."""
    b = data[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


# Writers --------------------------------------------------------------------------

def _w_string(s: str) -> bytes:
    b = s.encode()
    n = len(b)
    return (_SMALL[n] if n < 128 else varint(n)) + b


def _w_long(n: int) -> bytes:
    if not -_INT64 <= n < _INT64:
        raise OverflowError(n)  # the codec reports it properly
    return _SMALL[n] if 0 <= n < 128 else varint(n)


def _w_int(n: int) -> bytes:
    if not -_INT32 <= n < _INT32:
        raise OverflowError(n)
    return _SMALL[n] if 0 <= n < 128 else varint(n)


def _w_map(m: Mapping[str, str]) -> bytes:
    if not m:
        return _NULL
    # One block of len(m) entries, then the empty block that ends a map.
    parts = [varint(len(m))]
    for k, v in m.items():
        if type(v) is not str:
            raise TypeError(v)
        parts.append(_w_string(k))
        parts.append(_w_string(v))
    parts.append(_NULL)
    return b"".join(parts)


# Readers --------------------------------------------------------------------------

def _r_string(data: bytes, pos: int) -> tuple[str, int]:
    n, pos = read_long(data, pos)
    if n < 0:
        raise Declined
    # A length past the end is caught by the reader's final check: pos != len(data).
    return data[pos:pos + n].decode(), pos + n


def _r_clean_string(data: bytes, pos: int) -> tuple[str, int]:
    """:func:`_r_string` declining U+0000 and U+0001, which the history stores escaped."""
    s, pos = _r_string(data, pos)
    if "\x00" in s or "\x01" in s:
        raise Declined
    return s, pos


def _map_reader(string: Callable[[bytes, int], tuple[str, int]]
                ) -> Callable[[bytes, int], tuple[dict[str, str], int]]:
    def read_map(data: bytes, pos: int) -> tuple[dict[str, str], int]:
        m: dict[str, str] = {}
        while True:
            count, pos = read_long(data, pos)
            if count == 0:
                return m, pos
            if count < 0:  # a block with its byte size: skip the size, read |count| pairs
                _, pos = read_long(data, pos)
                count = -count
            for _ in range(count):
                key, pos = string(data, pos)
                m[key], pos = string(data, pos)
    return read_map


# Code generation ------------------------------------------------------------------

_PRIMITIVE_WRITERS = {"string": "_w_string({x})", "int": "_w_int({x})",
                      "long": "_w_long({x})", "double": "_pack_double({x})"}


def _is_optional(t: Any) -> bool:
    return isinstance(t, list) and len(t) == 2 and t[0] == "null"


def _absent_is_one_zero(t: Any) -> bool:
    """Whether the field's absent value (null, or an empty map) is the byte 00."""
    return _is_optional(t) or (isinstance(t, dict) and t.get("type") == "map")


class _Gen:
    def __init__(self, clean: bool = False, enum_index: bool = False) -> None:
        self.env: dict[str, Any] = {}
        self.n = 0
        self.clean = clean
        self.enum_index = enum_index

    def name(self, value: Any, stem: str) -> str:
        self.n += 1
        key = f"_{stem}{self.n}"
        self.env[key] = value
        return key

    def tmp(self) -> str:
        self.n += 1
        return f"t{self.n}"

    def write(self, t: Any, x: str) -> str:
        """An expression writing the value of expression ``x`` (a name or attribute)."""
        if isinstance(t, str) and t in _PRIMITIVE_WRITERS:
            return _PRIMITIVE_WRITERS[t].format(x=x)
        if _is_optional(t):
            return f"(_NULL if {x} is None else _SOME + {self.write(t[1], x)})"
        if isinstance(t, dict) and t.get("type") == "enum" and t["name"] in _ENUM_CLASSES:
            cls = _ENUM_CLASSES[t["name"]]
            return f"{self.name({cls(s): varint(i) for i, s in enumerate(t['symbols'])}, 'enum')}[{x}]"
        if isinstance(t, dict) and t.get("type") == "map" and t.get("values") == "string":
            return f"_w_map({x})"
        if isinstance(t, dict) and t.get("type") == "record" and t["name"] in _RECORD_CLASSES:
            return "(" + " + ".join(self.write(f["type"], f"{x}.{f['name']}")
                                    for f in t["fields"]) + ")"
        raise Unsupported(f"no generated writer for Avro type {t!r}")

    def read(self, t: Any, v: str, indent: str) -> list[str]:
        """Statements reading a value of type ``t`` into the local ``v``."""
        if t in ("int", "long"):
            # A one-byte varint (0..63, -64..-1) inline: counts, attempts, small ints.
            bound = "_INT32" if t == "int" else "_INT64"
            return [f"{indent}b = data[pos]", f"{indent}if b < 0x80:",
                    f"{indent}    {v} = (b >> 1) ^ -(b & 1)", f"{indent}    pos += 1",
                    f"{indent}else:", f"{indent}    {v}, pos = read_long(data, pos)",
                    f"{indent}    if not -{bound} <= {v} < {bound}:",
                    f"{indent}        raise Declined"]
        if t == "double":
            return [f"{indent}if pos + 8 > len(data):", f"{indent}    raise Declined",
                    f"{indent}{v} = _unpack_double(data, pos)[0]", f"{indent}pos += 8"]
        if t == "string":
            # A length under 64 bytes (one varint byte) inline; the rest by a call.
            return [f"{indent}b = data[pos]", f"{indent}if b < 0x80 and not b & 1:",
                    f"{indent}    stop = pos + 1 + (b >> 1)",
                    f"{indent}    {v} = data[pos + 1:stop].decode()", f"{indent}    pos = stop",
                    *([f"{indent}    if '\\x00' in {v} or '\\x01' in {v}:",
                       f"{indent}        raise Declined"] if self.clean else []),
                    f"{indent}else:", f"{indent}    {v}, pos = _string(data, pos)"]
        if _is_optional(t):
            return [f"{indent}b = data[pos]", f"{indent}pos += 1",
                    f"{indent}if b == 0:", f"{indent}    {v} = None",
                    f"{indent}elif b == 2:", *self.read(t[1], v, indent + "    "),
                    f"{indent}else:", f"{indent}    raise Declined"]
        if isinstance(t, dict) and t.get("type") == "enum" and t["name"] in _ENUM_CLASSES:
            symbols = tuple(_ENUM_CLASSES[t["name"]](s) for s in t["symbols"])
            value = "b >> 1" if self.enum_index else f"{self.name(symbols, 'symbols')}[b >> 1]"
            return [f"{indent}b = data[pos]", f"{indent}if b & 0x81 or b >> 1 >= {len(symbols)}:",
                    f"{indent}    raise Declined  # negative, or no such symbol",
                    f"{indent}{v} = {value}", f"{indent}pos += 1"]
        if isinstance(t, dict) and t.get("type") == "map" and t.get("values") == "string":
            return [f"{indent}if data[pos] == 0:", f"{indent}    {v} = {{}}",
                    f"{indent}    pos += 1", f"{indent}else:",
                    f"{indent}    {v}, pos = _map(data, pos)"]
        if isinstance(t, dict) and t.get("type") == "record" and t["name"] in _RECORD_CLASSES:
            record = self.name(_RECORD_CLASSES[t["name"]], "record")
            lines, args = [], []
            for f in t["fields"]:
                tv = self.tmp()
                lines += self.read(f["type"], tv, indent)
                args.append(f"{f['name']}={tv}")
            return [*lines, f"{indent}{v} = {record}({', '.join(args)})"]
        raise Unsupported(f"no generated reader for Avro type {t!r}")


def _compile(source: str, env: dict[str, Any], name: str) -> Any:
    namespace = {**globals(), **env}
    exec(compile(source, f"<generated {name}>", "exec"), namespace)  # noqa: S102
    return namespace[name]


def make_writer(schema: Mapping[str, Any], header: bytes) -> Callable[[TaskEvent], bytes]:
    """``write(event) -> header + body``, for the TaskEvent ``schema`` (parsed)."""
    gen = _Gen()
    exprs = [gen.write(f["type"], f"e.{f['name']}") for f in schema["fields"]]
    gen.env["_HEADER"] = header
    source = ("def write(e):\n    return b''.join([_HEADER,\n        "
              + ",\n        ".join(exprs) + "])\n")
    writer: Callable[[TaskEvent], bytes] = _compile(source, gen.env, "write")
    return writer


def make_reader(schema: Mapping[str, Any], *, clean: bool = False,
                to_event: bool = True) -> Callable[[bytes, int], Any]:
    """``read(data, pos)`` of the body at ``data[pos:]`` to its end: a :class:`TaskEvent`
    (``to_event``), else the list of field values in schema order (records built,
    enums as the symbol's index in the schema). Raises :class:`Declined` (or IndexError,
    UnicodeDecodeError) on a body it does not accept. ``clean``: decline strings the
    history stores escaped."""
    names = tuple(f["name"] for f in schema["fields"])
    if to_event and names != tuple(f.name for f in fields(TaskEvent)):
        raise Unsupported("the schema's fields are not TaskEvent's")
    gen = _Gen(clean, enum_index=not to_event)
    gen.env["_string"] = _r_clean_string if clean else _r_string
    gen.env["_map"] = _map_reader(gen.env["_string"])
    variables = [f"v{i}" for i in range(len(names))]
    types = [f["type"] for f in schema["fields"]]
    # The longest run of fields at the end whose absent value is one 00 byte. Before
    # each of them, a body whose rest is one 00 per remaining field has them all absent
    # (the usual event stops early: no lineage, chord, eta or meta).
    tail = len(types)
    while tail > 0 and _absent_is_one_zero(types[tail - 1]):
        tail -= 1
    lines = ["def read(data, pos):"]
    for i in range(tail):
        lines += gen.read(types[i], variables[i], "    ")
    lines.append("    end = len(data)")
    indent = "    "
    for i in range(tail, len(types)):
        left = len(types) - i
        gen.env[f"_ABSENT{left}"] = bytes(left)
        lines.append(f"{indent}if end - pos == {left} and data[pos:] == _ABSENT{left}:")
        lines += [f"{indent}    {v} = {{}}" if not _is_optional(t) else f"{indent}    {v} = None"
                  for v, t in zip(variables[i:], types[i:])]
        lines.append(f"{indent}else:")
        indent += "    "
        lines += gen.read(types[i], variables[i], indent)
    lines += [f"{indent}if pos != end:", f"{indent}    raise Declined"]
    if to_event:
        gen.env["_Event"] = TaskEvent
        lines.append("    return _Event(" + ", ".join(variables) + ")")
    else:
        lines.append("    return [" + ", ".join(variables) + "]")
    return _compile("\n".join(lines) + "\n", gen.env, "read")  # type: ignore[no-any-return]


def _sample() -> TaskEvent:
    return TaskEvent(
        event_id="0" * 32, task_id="self-check", state=State.FAILURE,
        timestamp=1_700_000_000_000, task_name="t", worker="w", attempt=3, args="[1]",
        kwargs='{"k":"é"}', exception=ExceptionInfo("ValueError", "builtins", "x" * 200),
        traceback="tb", runtime=0.25, parent_id="p", root_id="r", group_id="g",
        chord_id="c", chord_size=300, chord_index=299, eta=-5, meta={"trace": "abc"},
    )


class EventEncoder:
    """``encode(event) -> bytes``, equal to ``codec.encode(event)``, through the generated
    writer when the codec's TaskEvent schema has one that agrees with fastavro."""

    __slots__ = ("codec", "fast", "_encode")

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.fast = False
        self._encode: Callable[[TaskEvent], bytes] = codec.encode
        write = codec.task_event_writer()
        if write is None:
            return
        max_bytes = codec.max_bytes

        def fast_encode(event: TaskEvent) -> bytes:
            try:  # a FORGOTTEN event is a KeyError here: it has its own record type
                data = write(event)
            except (AttributeError, TypeError, ValueError, KeyError, OverflowError):
                return codec.encode(event)  # raises the codec's own error
            if len(data) > max_bytes:
                return codec.encode(event)  # raises EventTooLarge, worded by the codec
            return data

        sample = _sample()
        try:
            agrees = write(sample) == codec.encode(sample)
        except (ResultlogError, ValueError, TypeError, KeyError, AttributeError):
            agrees = False
        if agrees:
            self._encode = fast_encode
            self.fast = True

    def encode(self, event: TaskEvent) -> bytes:
        return self._encode(event)
