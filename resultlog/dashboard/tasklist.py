"""The task list: filtered keyset pages over ``task_summary``, newest first by
``(first_seen, task_id)``. A page never counts or skips rows: it is one range scan of an
index from where the previous page ended (the *cursor*), so page 10,000 costs what page
1 does (docs/dashboard.md shows the plans).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from resultlog import names
from resultlog.errors import ValidationError
from resultlog.schemas.event import MAX_ID_LENGTH
from resultlog.schemas.states import State
from resultlog.schemas.taskrows import from_pg_text, optional_from_pg_text, to_pg_text
from resultlog.views.migrations import quote_ident

#: Rows per page unless asked otherwise, and the most a page may have.
PAGE_ROWS = 50
MAX_PAGE_ROWS = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """What the list shows; every field is optional (None: no condition)."""

    state: State | None = None
    name: str | None = None
    worker: str | None = None
    since: datetime | None = None  # first seen at or after
    until: datetime | None = None  # first seen before
    id_prefix: str | None = None  # task ids starting with this

    def __post_init__(self) -> None:
        for what, text in (("name", self.name), ("worker", self.worker),
                           ("id", self.id_prefix)):
            if text is not None and (not text or len(text) > MAX_ID_LENGTH):
                raise ValidationError(
                    f"task filter {what} must be 1 to {MAX_ID_LENGTH} characters, got {text!r}")
        for what, when in (("since", self.since), ("until", self.until)):
            if when is not None and when.tzinfo is None:
                raise ValidationError(f"task filter {what} must be timezone-aware, got {when!r}")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ValidationError(
                f"task filter: until ({self.until.isoformat()}) is not after since "
                f"({self.since.isoformat()})")


@dataclass(frozen=True, slots=True)
class Cursor:
    """A row's place in the list's order; pages start strictly after (or before) it."""

    first_seen: datetime
    task_id: str

    def encode(self) -> str:
        micros = (self.first_seen - _EPOCH) // _MICROSECOND
        raw = json.dumps([micros, self.task_id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            micros, task_id = json.loads(raw)
            # type(), not isinstance(): JSON's true and false are ints to isinstance().
            if type(micros) is not int or not isinstance(task_id, str):
                raise ValueError(raw)
            when = _EPOCH + micros * _MICROSECOND
        except (ValueError, TypeError, OverflowError):
            raise ValidationError(
                f"page cursor {text[:80]!r} is not one this dashboard made; "
                "start again from the first page") from None
        return cls(when, task_id)


@dataclass(frozen=True, slots=True)
class TaskRow:
    task_id: str
    task_name: str | None
    state: State
    worker: str | None
    attempt: int
    first_seen: datetime
    last_seen: datetime
    exception_type: str | None


@dataclass(frozen=True, slots=True)
class TaskPage:
    rows: list[TaskRow]
    older: Cursor | None  # the next page (older tasks), None at the end
    newer: Cursor | None  # the page before (newer tasks), None at the start


_COLUMNS = ("task_id, task_name, state, worker, attempt, first_seen, last_seen,"
            " exception_type")


def page_query(schema: str, f: TaskFilter, after: Cursor | None, *, newer: bool,
               limit: int) -> tuple[str, list[Any]]:
    """The SQL and arguments of one page: ``limit`` + 1 rows (the extra one says whether
    there is more) after ``after`` in the list's order, or before it when ``newer``."""
    where: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if f.state is not None:
        where.append(f"state = {arg(f.state.value)}")
    if f.name is not None:
        where.append(f"task_name = {arg(to_pg_text(f.name))}")
    if f.worker is not None:
        where.append(f"worker = {arg(to_pg_text(f.worker))}")
    if f.since is not None:
        where.append(f"first_seen >= {arg(f.since)}")
    if f.until is not None:
        where.append(f"first_seen < {arg(f.until)}")
    if f.id_prefix is not None:
        # A range on the "C"-collated primary key: an index scan, and no LIKE
        # metacharacters to escape. U+10FFFF is the greatest code point.
        prefix = to_pg_text(f.id_prefix)
        where.append(f"task_id >= {arg(prefix)} AND task_id < {arg(prefix + chr(0x10FFFF))}")
    if after is not None:
        op = ">" if newer else "<"
        where.append(f"(first_seen, task_id) {op} ({arg(after.first_seen)}, "
                     f"{arg(to_pg_text(after.task_id))})")
    order = "ASC" if newer else "DESC"
    sql = (f"SELECT {_COLUMNS} FROM {quote_ident(schema)}.{names.TASK_SUMMARY_TABLE}"
           + (" WHERE " + " AND ".join(where) if where else "")
           + f" ORDER BY first_seen {order}, task_id {order} LIMIT {arg(limit + 1)}")
    return sql, args


async def task_page(pool: asyncpg.Pool, schema: str, f: TaskFilter, after: Cursor | None = None,
                    *, newer: bool = False, limit: int = PAGE_ROWS) -> TaskPage:
    """One page of the list: the ``limit`` tasks after ``after`` (older ones), or the
    ``limit`` before it (newer ones) when ``newer``; newest first either way."""
    if not 1 <= limit <= MAX_PAGE_ROWS:
        raise ValidationError(f"page size {limit}: must be between 1 and {MAX_PAGE_ROWS}")
    sql, args = page_query(schema, f, after, newer=newer, limit=limit)
    records = await pool.fetch(sql, *args)
    more = len(records) > limit
    rows = [_row(r) for r in records[:limit]]
    if newer:
        rows.reverse()
    first = Cursor(rows[0].first_seen, rows[0].task_id) if rows else None
    last = Cursor(rows[-1].first_seen, rows[-1].task_id) if rows else None
    if newer:
        return TaskPage(rows, older=last, newer=first if more else None)
    return TaskPage(rows, older=last if more else None, newer=first if after is not None else None)


def _row(r: Any) -> TaskRow:
    return TaskRow(
        task_id=from_pg_text(r["task_id"]),
        task_name=optional_from_pg_text(r["task_name"]),
        state=State(r["state"]),
        worker=optional_from_pg_text(r["worker"]),
        attempt=r["attempt"],
        first_seen=r["first_seen"],
        last_seen=r["last_seen"],
        exception_type=optional_from_pg_text(r["exception_type"]),
    )
