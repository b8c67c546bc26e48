"""What the dashboard's readers share: one schema's tables on a shared pool, and the
recursive query that lists an indexed column's distinct values."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]

from resultlog.views.migrations import quote_ident


class SchemaReads:
    """Queries over the tables of one schema, on a pool the dashboard shares."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self.pool = pool
        self._schema = quote_ident(schema)

    def table(self, name: str) -> str:
        """``name`` qualified by the (quoted) schema, ready for a query's text."""
        return f"{self._schema}.{name}"


def distinct_values(cte: str, table: str, column: str) -> str:
    """A recursive CTE ``cte(value)`` of the non-null values of ``table.column``, in
    order, found by skipping through the column's index: one probe per value, however
    many rows share it (PostgreSQL has no loose index scan). Its last row is a NULL:
    filter with ``WHERE cte.value IS NOT NULL``."""
    return f"""{cte}(value) AS (
        (SELECT {column} FROM {table} WHERE {column} IS NOT NULL ORDER BY {column} LIMIT 1)
        UNION ALL
        SELECT (SELECT t.{column} FROM {table} t WHERE t.{column} > {cte}.value
                ORDER BY t.{column} LIMIT 1)
        FROM {cte} WHERE {cte}.value IS NOT NULL
    )"""
