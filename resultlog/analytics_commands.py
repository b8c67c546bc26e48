"""``resultlog stats | history | status | prune``: the history, from the command line.

Read-only commands (``stats``, ``history``, ``status``) query the views of
``views/sql/0002_analytics.sql`` through :mod:`resultlog.views.analytics`; ``prune``
applies retention through :mod:`resultlog.views.prune`. Times print in UTC.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from resultlog.schemas.event import validate_id
from resultlog.schemas.states import LATEST_DATETIME_MS
from resultlog.errors import ValidationError
from resultlog.settings import Settings

if TYPE_CHECKING:
    from resultlog.views.analytics import Analytics

T = TypeVar("T")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION_RE = re.compile(r"^(?:\d{1,9}[smhdw])+$")
_PART_RE = re.compile(r"(\d+)([smhdw])")
#: Longer than this is a typo (a century; a window's start is further held to the epoch).
MAX_DURATION = timedelta(days=36_500)
#: The times a window can start or end at, in UTC: the history's event times count
#: milliseconds from the epoch, and 9999-12-31T23:59:59.999Z is the last millisecond a
#: datetime holds (the range of ``resultlog replay --from-timestamp``). Checked here, as
#: asyncpg sends the first and last datetime as -infinity and infinity, and a time
#: whose UTC form is outside them cannot be sent at all.
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST_TIME = EARLIEST_TIME + timedelta(milliseconds=LATEST_DATETIME_MS)


def parse_duration(text: str, option: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a sum such as ``1h30m``; positive."""
    spec = text.strip().lower()
    if not _DURATION_RE.match(spec):
        raise ValidationError(
            f"{option} {text!r}: expected a duration such as 30d, 12h, 90m or 1h30m "
            "(units: s, m, h, d, w)")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART_RE.findall(spec))
    if seconds == 0:
        raise ValidationError(f"{option} {text!r}: the duration must be more than zero")
    # Compared as a count of seconds: a sum of parts can exceed what a timedelta holds
    # (OverflowError), and the cap is far below that.
    if seconds > MAX_DURATION // timedelta(seconds=1):
        raise ValidationError(f"{option} {text!r}: at most {MAX_DURATION.days} days")
    return timedelta(seconds=seconds)


def parse_time(text: str, option: str, now: datetime) -> datetime:
    """A duration back from ``now`` (``1h``) or an ISO 8601 time (UTC unless it says),
    from EARLIEST_TIME to LATEST_TIME."""
    if _DURATION_RE.match(text.strip().lower()):
        # "The last N": nothing is older than the epoch, so a century back from now
        # means from the epoch (what it matched before these bounds).
        return max(now - parse_duration(text, option), EARLIEST_TIME)
    else:
        try:
            when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(
                f"{option} {text!r}: expected a duration back from now (1h, 30m, 2d) or an "
                "ISO 8601 time such as 2026-11-22T10:00:00Z") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
    # Compared, not converted: converting 0001-01-01T00:00+05:00 to UTC overflows.
    if when < EARLIEST_TIME:
        raise ValidationError(
            f"{option} {text!r}: before {fmt_time(EARLIEST_TIME)} (the epoch), where the "
            "history's times start; give a later time")
    if when > LATEST_TIME:
        raise ValidationError(
            f"{option} {text!r}: after {fmt_time(LATEST_TIME)}, the latest time a window "
            "can name; give an earlier time")
    return when


def fmt_time(when: datetime | None) -> str:
    if when is None:
        return "-"
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    # Another producer's runtime may be NaN or infinite (docs/contract.md): "nan", not "nans".
    return f"{value:,.3f}s" if math.isfinite(value) else str(value)


def fmt_duration(d: timedelta) -> str:
    seconds = int(d.total_seconds())
    parts: list[str] = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Rows as aligned columns; column indexes in ``right`` are right-aligned (numbers)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if i in right else c.ljust(w)
               for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


# -- commands --------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "stats", help="per task name over a time window: counts, rates, runtime percentiles",
        description="Outcomes of task attempts (SUCCESS, FAILURE, RETRY, REVOKED) per task "
        "name from the Postgres history, with runtime percentiles. Times are UTC.",
    )
    p.add_argument("--since", default="1h", metavar="WHEN",
                   help="start: a duration back from now (1h, 30m, 2d) or an ISO 8601 time "
                   "(default 1h)")
    p.add_argument("--until", metavar="WHEN", help="end (exclusive), same forms (default now)")
    p.add_argument("--name", help="only this task name")
    p.add_argument("--bucket", metavar="DURATION",
                   help="one row per bucket of this width from --since (5m, 1h); "
                   "default: one row for the whole window")
    p.set_defaults(func=_stats)

    h: argparse.ArgumentParser = subparsers.add_parser(
        "history", help="every transition of one task, with time offsets",
    )
    h.add_argument("task_id", metavar="TASK_ID")
    h.set_defaults(func=_history)

    s: argparse.ArgumentParser = subparsers.add_parser(
        "status", help="the latest state of one task, from the history; exit 1 if unknown",
    )
    s.add_argument("task_id", metavar="TASK_ID")
    s.set_defaults(func=_status)

    r: argparse.ArgumentParser = subparsers.add_parser(
        "prune", help="delete the history older than a duration (whole days: drop partitions)",
        description="Drop the daily partitions of the history entirely older than the cutoff "
        "(DETACH CONCURRENTLY, then DROP) and delete the older rows of the one partition "
        "that straddles it. Rows exactly at the cutoff are kept.",
    )
    r.add_argument("--older-than", required=True, metavar="DURATION",
                   help="remove events older than this (30d, 12h, 90m)")
    r.add_argument("--dry-run", action="store_true", help="only report what would be removed")
    r.set_defaults(func=_prune)


def _read(query: Callable[[Analytics], Awaitable[T]]) -> T:
    """One query of the history, on a pool opened for it and closed after."""
    from resultlog.views.analytics import Analytics

    async def run() -> T:
        async with Analytics(Settings.from_env()) as analytics:
            return await query(analytics)

    return asyncio.run(run())


def _stats(args: argparse.Namespace) -> int:
    now = datetime.now(timezone.utc)
    since = parse_time(args.since, "--since", now)
    until = now if args.until is None else parse_time(args.until, "--until", now)
    bucket = None if args.bucket is None else parse_duration(args.bucket, "--bucket")
    if args.name is not None and not args.name.strip():
        raise ValidationError("--name must not be empty")
    if args.name is not None:
        validate_id("--name", args.name)  # its length, and text PostgreSQL can take
    rows = _read(lambda a: a.stats(since, until, bucket=bucket, name=args.name))
    what = f"task {args.name!r}" if args.name else "all tasks"
    per = f", per {fmt_duration(bucket)}" if bucket else ""
    print(f"{what} from {fmt_time(since)} to {fmt_time(until)}{per}")
    if not rows:
        print("no outcomes in this window")
        return 0
    headers = ["name", *(["bucket"] if bucket else []), "count", "ok", "failed", "retried",
               "revoked", "ok%", "fail%", "retry%", "p50", "p95", "p99"]
    cells = []
    for st in rows:
        cells.append([
            st.task_name if st.task_name is not None else "(unnamed)",
            *([fmt_time(st.bucket_start)] if bucket else []),
            f"{st.outcomes:,}", f"{st.succeeded:,}", f"{st.failed:,}", f"{st.retried:,}",
            f"{st.revoked:,}", f"{100 * st.success_rate:.1f}", f"{100 * st.failure_rate:.1f}",
            f"{100 * st.retry_rate:.1f}", fmt_seconds(st.runtime_p50),
            fmt_seconds(st.runtime_p95), fmt_seconds(st.runtime_p99),
        ])
    first_number = 2 if bucket else 1
    print(table(headers, cells, right=range(first_number, len(headers))))
    return 0


def _unknown(task_id: str) -> int:
    print(f"resultlog: task {task_id!r} is not in the history (unknown, or PENDING: no "
          "event of it has been processed)", file=sys.stderr)
    return 1


def _history(args: argparse.Namespace) -> int:
    transitions = _read(lambda a: a.transitions(args.task_id))
    if not transitions:
        return _unknown(args.task_id)
    cells = []
    for t in transitions:
        e = t.event
        exc = "" if e.exception is None else f"{e.exception.type}: {e.exception.message}"
        cells.append([
            f"+{t.offset_s:.3f}s",
            fmt_time(EARLIEST_TIME + timedelta(milliseconds=e.timestamp)),  # exact
            e.state.value, str(e.attempt), e.worker or "-",
            fmt_seconds(e.runtime) if e.runtime is not None else "", exc,
        ])
    print(f"task {args.task_id}: {len(transitions)} events")
    print(table(["offset", "time", "state", "attempt", "worker", "runtime", "exception"],
                cells, right=(0, 3, 5)))
    return 0


def _status(args: argparse.Namespace) -> int:
    task = _read(lambda a: a.task(args.task_id))
    if task is None:
        return _unknown(args.task_id)
    exc = "-" if task.exception_type is None else (
        f"{task.exception_type}: {task.exception_message}")
    pairs = [
        ("task", task.task_id), ("name", task.task_name or "-"), ("state", task.state.value),
        ("worker", task.worker or "-"), ("retries", str(task.retries)),
        ("first seen", fmt_time(task.first_seen)), ("started", fmt_time(task.started)),
        ("finished", fmt_time(task.finished)), ("runtime", fmt_seconds(task.runtime)),
        ("exception", exc),
    ]
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        print(f"{key.ljust(width)}  {value}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from resultlog.views.prune import prune

    older_than = parse_duration(args.older_than, "--older-than")
    cutoff_ms = time.time_ns() // 1_000_000 - int(older_than.total_seconds()) * 1000
    cutoff = datetime.fromtimestamp(cutoff_ms / 1000, timezone.utc)
    verb = "dry run: would remove" if args.dry_run else "removing"
    print(f"{verb} events before {fmt_time(cutoff)} (older than {fmt_duration(older_than)})")
    report = asyncio.run(prune(Settings.from_env(), cutoff_ms, dry_run=args.dry_run,
                               log=lambda line: print(line, flush=True)))
    trimmed = len(report.removed) - report.partitions_dropped
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {report.rows:,} rows: {report.partitions_dropped} partition(s) dropped, "
          f"{trimmed} trimmed")
    return 0
