"""Numbered SQL migrations (``views/sql/NNNN_name.sql``) applied once per schema.

:func:`migrate` is idempotent and safe to run from several processes at once: it
takes a transaction-scoped advisory lock keyed by the schema, then applies what the
schema's ``schema_migrations`` table does not list yet, all in that one transaction.
A second migrator waits on the lock and then finds nothing to do. A schema that is
already current costs one query and takes no lock, so every processor can call it on
start.

Migration files name objects through placeholders (``{schema}``, ``{history_table}``,
...) so that every name still comes from :mod:`resultlog.names`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from resultlog import names
from resultlog.errors import ConfigurationError

#: What a query raises in a schema whose migrations have not run yet.
NOT_MIGRATED = (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError,
                asyncpg.InvalidSchemaNameError)
_FILE_RE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
_PLACEHOLDER_RE = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str  # with placeholders

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def advisory_key(schema: str, purpose: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock`` (Python's hash() is salted)."""
    digest = hashlib.blake2b(names.pg_advisory_lock(schema, purpose).encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def placeholders(schema: str) -> dict[str, str]:
    return {
        "schema": quote_ident(schema),
        "history_table": names.HISTORY_TABLE,
        "offsets_table": names.OFFSETS_TABLE,
        "worker_heartbeats_table": names.WORKER_HEARTBEATS_TABLE,
        "worker_sessions_view": names.WORKER_SESSIONS_VIEW,
        "summary_table": names.TASK_SUMMARY_TABLE,
        "minutes_table": names.TASK_MINUTES_TABLE,
        "runtimes_table": names.TASK_RUNTIMES_TABLE,
        "rebuild_rollups_function": names.REBUILD_ROLLUPS_FUNCTION,
        "rollups_trigger": names.ROLLUPS_TRIGGER,
        "chord_hook_claims_table": names.CHORD_HOOK_CLAIMS_TABLE,
        "chord_body_fires_table": names.CHORD_BODY_FIRES_TABLE,
    }


def render(sql: str, values: Mapping[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        try:
            return values[match[1]]
        except KeyError:
            raise ValueError(f"unknown placeholder {match[0]} in a migration") from None

    return _PLACEHOLDER_RE.sub(sub, sql)


SQL_DIR = Path(__file__).with_name("sql")


@cache
def load_migrations() -> tuple[Migration, ...]:
    """Every ``sql/NNNN_*.sql`` shipped with :mod:`resultlog.views`, in version order."""
    found: list[Migration] = []
    for entry in SQL_DIR.iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            found.append(Migration(int(match["version"]), match["name"], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a version number: {versions}")
    return tuple(found)


async def _applied(conn: asyncpg.Connection, schema: str) -> dict[int, str] | None:
    """version -> checksum of what ``schema`` has had; None if it has no migrations table."""
    table = f"{quote_ident(schema)}.{names.MIGRATIONS_TABLE}"
    if await conn.fetchval("SELECT to_regclass($1)", table) is None:
        return None
    rows = await conn.fetch(f"SELECT version, checksum FROM {table}")
    return {r["version"]: r["checksum"] for r in rows}


def _pending(schema: str, applied: Mapping[int, str], known: Sequence[Migration]) -> list[Migration]:
    by_version = {m.version: m for m in known}
    newer = sorted(set(applied) - set(by_version))
    if newer:
        raise ConfigurationError(
            f"PostgreSQL schema {schema!r} has migrations {newer} that this resultlog does not "
            "know: a newer resultlog migrated it. Upgrade, or point RESULTLOG_POSTGRES_SCHEMA "
            "at another schema"
        )
    for version, checksum in applied.items():
        if by_version[version].checksum != checksum:
            m = by_version[version]
            raise ConfigurationError(
                f"migration {m.version:04d}_{m.name}.sql differs from the one applied to schema "
                f"{schema!r}; applied migrations must never be edited (add a new one)"
            )
    return [m for m in known if m.version not in applied]


async def migrate(conn: asyncpg.Connection, schema: str) -> list[int]:
    """Bring ``schema`` up to date; returns the versions this call applied."""
    known = load_migrations()
    applied = await _applied(conn, schema)
    if applied is not None and not _pending(schema, applied, known):
        return []
    values = placeholders(schema)
    table = f"{values['schema']}.{names.MIGRATIONS_TABLE}"
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", advisory_key(schema, "migrate"))
        # Under the lock, so "IF NOT EXISTS" cannot race another migrator's CREATE.
        # CREATE SCHEMA only when missing: even with IF NOT EXISTS it needs the CREATE
        # privilege on the database, which a role given a ready-made schema may lack.
        if await conn.fetchval("SELECT to_regnamespace($1)", values["schema"]) is None:
            await conn.execute(f"CREATE SCHEMA {values['schema']}")
        await conn.execute(
            "SET LOCAL client_min_messages = warning;"
            f"CREATE TABLE IF NOT EXISTS {table} ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        # Read again under the lock: another process may have migrated while we waited.
        pending = _pending(schema, await _applied(conn, schema) or {}, known)
        for m in pending:
            await conn.execute(render(m.sql, values))
            await conn.execute(
                f"INSERT INTO {table} (version, name, checksum) VALUES ($1, $2, $3)",
                m.version, m.name, m.checksum,
            )
    return [m.version for m in pending]
