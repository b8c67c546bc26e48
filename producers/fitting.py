"""Fitting a task's outcome within the event size limit instead of refusing it.

A SUCCESS over ``max_event_bytes`` is refused at the call: the caller can still act on
it. A FAILURE, RETRY or REVOKED is the last word on an attempt, and refusing it would
leave a client waiting for ever, so it is recorded with its large fields cut. What is
cut, in which order, and why a marker rather than new schema fields: docs/emitter.md,
"Size limit".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from resultlog.errors import EventTooLarge
from resultlog.names import TRUNCATED_META_KEY
from resultlog.schemas.event import ExceptionInfo, TaskEvent
from resultlog.schemas.states import State

log = logging.getLogger("resultlog.producers")

#: The states whose oversized events are cut to fit rather than refused.
FITTED_STATES = frozenset({State.FAILURE, State.RETRY, State.REVOKED})

# Varint lengths and the meta note grow by a few bytes as fields shrink; cutting this
# much more than measured makes the second encoding fit in all but contrived cases (and
# the loop below measures again when it does not).
_SLACK = 64


def marker(original_bytes: int) -> str:
    """What stands where text was cut."""
    return f"…[truncated from {original_bytes} bytes]…"


def truncate_text(text: str, keep_bytes: int) -> str:
    """``text`` cut to ``keep_bytes`` bytes of its UTF-8 content plus :func:`marker`.

    Keeps a third of the budget from the head and the rest from the tail; a character
    split by a cut is dropped, so the kept content is at most ``keep_bytes`` bytes.
    """
    raw = text.encode()
    if keep_bytes >= len(raw):
        return text
    keep_bytes = max(0, keep_bytes)
    head = keep_bytes // 3
    tail = keep_bytes - head
    return (
        raw[:head].decode(errors="ignore")
        + marker(len(raw))
        + raw[len(raw) - tail:].decode(errors="ignore")
    )


@dataclass(slots=True)
class _Piece:
    """One field that may be cut: its original size and how many of its bytes to keep."""

    name: str
    size: int
    keep: int
    divisible: bool  # text can be cut anywhere; JSON and meta only dropped whole

    @property
    def marker_bytes(self) -> int:
        return len(marker(self.size).encode())


def _level(keeps: list[int], target: int) -> int:
    """The largest cap c with ``sum(min(k, c) for k in keeps) <= target`` (water-filling)."""
    if target <= 0:
        return 0
    remaining, left = target, len(keeps)
    for k in sorted(keeps):
        if k * left > remaining:
            return remaining // left
        remaining -= k
        left -= 1
    return max(keeps)


def fit_within_limit(event: TaskEvent, encode: Callable[[TaskEvent], bytes]
                     ) -> tuple[TaskEvent, bytes]:
    """``event`` and ``encode(event)``; for a FAILURE, RETRY or REVOKED over the limit,
    its cut copy and the copy's bytes: what a reader of the log will see.

    ``encode`` raises :class:`EventTooLarge` (with ``size`` and ``limit``) for anything
    over the limit; its result is the only measure used, so what this returns is always
    within the limit. Other states' EventTooLarge, and a fitted state's whose uncut
    fields alone are over the limit, propagate.
    """
    try:
        return event, encode(event)
    except EventTooLarge as exc:
        if event.state not in FITTED_STATES or exc.size is None or exc.limit is None:
            raise
        first, size, limit = exc, exc.size, exc.limit
    fitter = _Fitter(event)
    over = size - limit
    while True:
        if not fitter.shrink(over + _SLACK):
            raise EventTooLarge(
                f"the {event.state.value} event of task {event.task_id!r} is {size} bytes "
                f"and stays over the {limit}-byte limit (RESULTLOG_MAX_EVENT_BYTES) even with "
                "its traceback, exception message, args, kwargs and meta cut: its task name, "
                "worker name or exception type name is too long for the limit",
                size=size, limit=limit,
            ) from first
        fitted = fitter.event()
        try:
            data = encode(fitted)
        except EventTooLarge as exc:
            if exc.size is None or exc.limit is None:
                raise
            over = exc.size - exc.limit
            continue
        log.warning(
            "resultlog: the %s event of task %s was %d bytes, over the %d-byte limit "
            "(RESULTLOG_MAX_EVENT_BYTES); recorded as %d bytes with %s",
            event.state.value, event.task_id, size, limit, len(data),
            fitted.meta[TRUNCATED_META_KEY],
        )
        return fitted, data


class _Fitter:
    """The pieces of one event that may be cut, and the event they now make."""

    def __init__(self, event: TaskEvent) -> None:
        self.original = event
        exc = event.exception
        meta_size = sum(len(k.encode()) + len(v.encode()) for k, v in event.meta.items())
        candidates = [
            ("traceback", event.traceback, True),
            ("exception.message", None if exc is None else exc.message, True),
            ("args", event.args, False),
            ("kwargs", event.kwargs, False),
        ]
        self.pieces = [
            _Piece(name, n, n, divisible)
            for name, text, divisible in candidates
            if text and (n := len(text.encode()))
        ]
        if meta_size:
            self.pieces.append(_Piece("meta", meta_size, meta_size, False))

    def shrink(self, by: int) -> bool:
        """Cut about ``by`` bytes; False if nothing is left to cut.

        Text first, levelled: the longest texts are cut to a common length, so a 5 MB
        traceback and a 3 MB message both keep some of themselves. Then whole fields
        (args, kwargs, meta) in order, while bytes are still needed.
        """
        texts = [p for p in self.pieces if p.divisible and p.keep > p.marker_bytes]
        if texts:
            # A text cut for the first time gains its marker: cut that much more.
            need = by + sum(p.marker_bytes for p in texts if p.keep == p.size)
            cap = _level([p.keep for p in texts], sum(p.keep for p in texts) - need)
            saved = 0
            for p in texts:
                if p.keep > cap:
                    saved += p.keep - cap - (p.marker_bytes if p.keep == p.size else 0)
                    p.keep = cap
            if saved >= by:
                return True
            by -= max(saved, 0)
        cut_any = bool(texts)
        for p in self.pieces:
            if by <= 0:
                break
            if not p.divisible and p.keep:
                by -= p.keep
                p.keep = 0
                cut_any = True
        return cut_any

    def event(self) -> TaskEvent:
        e = self.original
        cut = {p.name: p for p in self.pieces if p.keep < p.size}
        exc = e.exception
        if exc is not None and "exception.message" in cut:
            exc = ExceptionInfo(exc.type, exc.module, truncate_text(exc.message, cut["exception.message"].keep))
        meta = {} if "meta" in cut else dict(e.meta)
        meta[TRUNCATED_META_KEY] = ",".join(f"{p.name}:{p.size}" for p in cut.values())
        traceback = e.traceback
        if traceback is not None and "traceback" in cut:
            traceback = truncate_text(traceback, cut["traceback"].keep)
        return replace(
            e,
            traceback=traceback,
            exception=exc,
            args=None if "args" in cut else e.args,
            kwargs=None if "kwargs" in cut else e.kwargs,
            meta=meta,
        )
