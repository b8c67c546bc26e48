"""Daily partitions of the history table: naming, day arithmetic, race-safe creation.

Why they are made ahead and on demand, and ATTACHed rather than created ``PARTITION OF``
(which would lock the whole history): docs/history.md, "Partitioning".
"""

from __future__ import annotations

from collections.abc import Collection

import asyncpg  # type: ignore[import-untyped]

from resultlog import names
from resultlog.errors import PartitionDetaching
from resultlog.views.migrations import advisory_key, quote_ident

DAY_MS = 86_400_000


def day_of(timestamp_ms: int) -> int:
    """Days since 1970-01-01 (UTC) of a timestamp in ms."""
    return timestamp_ms // DAY_MS


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day number, for any year (``datetime.date`` stops at 9999).

    Howard Hinnant's algorithm for the proleptic Gregorian calendar.
    """
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def partition_name(day: int) -> str:
    year, month, dom = civil_from_days(day)
    return names.history_partition(f"{year:04d}{month:02d}{dom:02d}")


async def existing_partitions(conn: asyncpg.Connection, schema: str) -> set[str]:
    """Names of the partitions attached to the history table now."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = $1::regclass",
        f"{quote_ident(schema)}.{names.HISTORY_TABLE}",
    )
    return {r["relname"] for r in rows}


async def check_writable(conn: asyncpg.Connection, schema: str, days: Collection[int]) -> None:
    """:class:`PartitionDetaching` unless a row of each of ``days`` can go into the
    history now, in a partition of its own or one :func:`ensure_partitions` can make.

    ``resultlog prune`` takes a day away in steps: ``DETACH ... CONCURRENTLY`` leaves the
    partition pending detach while it waits for the queries that started before it (a
    row of that day then has no partition, and a new one cannot be attached beside it),
    and the detached table keeps the partition's name until it is dropped. A late event
    for that day waits for the drop; a prune interrupted in between is finished by the
    next one."""
    parent = f"{quote_ident(schema)}.{names.HISTORY_TABLE}"
    rows = await conn.fetch(
        "SELECT c.relname, coalesce(i.inhdetachpending, false) AS pending"
        " FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = $2::regclass"
        " WHERE c.relnamespace = $1::regnamespace AND c.relname = ANY($3::text[])"
        " AND (i.inhrelid IS NULL OR i.inhdetachpending)",
        quote_ident(schema), parent, sorted({partition_name(day) for day in days}))
    if rows:
        busy = ", ".join(f"{r['relname']} ({'pending detach' if r['pending'] else 'detached, not dropped'})"
                         for r in rows)
        raise PartitionDetaching(
            f"events fall on days whose history partitions {busy} of {parent} are being "
            "removed by `resultlog prune` (a DETACH ... CONCURRENTLY waits for the queries "
            "that started before it): they are written once the prune has dropped them. If "
            "no prune is running, one was interrupted: run `resultlog prune` again to finish "
            "it (a table detached by hand with a partition's name must be renamed)")


async def ensure_partitions(conn: asyncpg.Connection, schema: str, days: Collection[int]) -> list[str]:
    """Create the partitions for ``days`` that do not exist yet; returns their names.
    :class:`PartitionDetaching` if a day's partition is being removed by a prune
    (:func:`check_writable`).

    Safe against other processes doing the same: creators serialize on an advisory
    lock held to commit, and look for existing partitions only once they hold it.
    """
    s = quote_ident(schema)
    parent = f"{s}.{names.HISTORY_TABLE}"
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", advisory_key(schema, "partitions"))
        await check_writable(conn, schema, days)
        existing = await existing_partitions(conn, schema)
        created = []
        statements = []
        for day in sorted(set(days)):
            name = partition_name(day)
            if name in existing:
                continue
            # Bounds through the same function that computes each row's ts: the two
            # cannot disagree about which side of midnight a row falls.
            statements.append(
                f"CREATE TABLE {s}.{name} (LIKE {parent} INCLUDING ALL);"
                f"ALTER TABLE {parent} ATTACH PARTITION {s}.{name} FOR VALUES"
                f" FROM ({s}.ms_to_timestamptz({day * DAY_MS}))"
                f" TO ({s}.ms_to_timestamptz({(day + 1) * DAY_MS}));"
            )
            created.append(name)
        if statements:
            await conn.execute("".join(statements))
    return created
