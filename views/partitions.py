"""Daily partitions of the history table: naming, day arithmetic, race-safe creation.

Why they are made ahead and on demand, and ATTACHed rather than created ``PARTITION OF``
(which would lock the whole history): docs/history.md, "Partitioning".
"""

from __future__ import annotations

from collections.abc import Collection

import asyncpg  # type: ignore[import-untyped]

from resultlog import names
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


async def ensure_partitions(conn: asyncpg.Connection, schema: str, days: Collection[int]) -> list[str]:
    """Create the partitions for ``days`` that do not exist yet; returns their names.

    Safe against other processes doing the same: creators serialize on an advisory
    lock held to commit, and look for existing partitions only once they hold it.
    """
    s = quote_ident(schema)
    parent = f"{s}.{names.HISTORY_TABLE}"
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", advisory_key(schema, "partitions"))
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
