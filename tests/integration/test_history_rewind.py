"""The live fold commits the history asynchronously; what a PostgreSQL crash takes back
is read from the log again (processors/engine.py, docs/processor.md)."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg
import pytest

from resultlog.producers import Emitter
from resultlog.settings import Settings
from tests.integration.processes import ProcessorProcess
from tests.integration.test_pipeline import eventually

pytestmark = pytest.mark.integration


def local_ports(pid: int) -> list[int]:
    """The local TCP ports of ``pid``'s sockets (Linux /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def test_a_lost_tail_of_commits_is_read_again_from_the_log(settings: Settings) -> None:
    """A crash with asynchronous commits loses the newest transactions whole: rows and
    the offsets written with them, the same suffix in every partition's order. That is
    made here by hand (the shared server is never crashed): the newest rows of each
    partition and their offsets taken back in one transaction, and the processor's
    connections broken, as a crash breaks them. The processor must notice on its next
    write and fold the lost events again: every event exactly once in the history."""
    schema = settings.postgres_schema
    history, offsets = f'"{schema}".task_events', f'"{schema}".consumer_offsets'
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        async def rows() -> int:
            try:
                n: int = await conn.fetchval(f"SELECT count(*) FROM {history}")
                return n
            except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
                return 0

        with ProcessorProcess(settings) as proc:
            async def emit_and_store(prefix: str, n: int, total: int) -> None:
                """Emit ``n`` successes, then wait until the history holds ``total`` rows."""
                async with Emitter(settings) as em:
                    for i in range(n):
                        await em.success(f"{prefix}-{i}", i)

                async def all_stored() -> bool:
                    return await rows() == total
                await eventually(all_stored, f"{total} rows\n{proc.output()[-3000:]}")

            await emit_and_store("before", 200, 200)

            async with conn.transaction():
                lost = await conn.fetchval(
                    f"WITH cut AS (SELECT kafka_partition AS p, max(kafka_offset) - 4 AS o"
                    f" FROM {history} GROUP BY kafka_partition HAVING max(kafka_offset) >= 4),"
                    f" gone AS (DELETE FROM {history} h USING cut"
                    f" WHERE h.kafka_partition = cut.p AND h.kafka_offset >= cut.o RETURNING 1),"
                    f" moved AS (UPDATE {offsets} f SET next_offset = cut.o FROM cut"
                    f" WHERE f.kafka_partition = cut.p AND f.consumer_group = $1 RETURNING 1)"
                    f" SELECT (SELECT count(*) FROM gone) + 0 * (SELECT count(*) FROM moved)",
                    settings.consumer_group)
            assert lost > 0
            assert await rows() == 200 - lost
            # Only this processor's sessions (by their client ports): nobody else's.
            assert proc.proc is not None
            broken = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'resultlog-history' AND client_port = ANY($1::int[])",
                local_ports(proc.proc.pid))
            assert broken > 0

            await emit_and_store("after", 20, 220)
            assert "the history lost commits" in proc.output(), proc.output()[-3000:]
        distinct = await conn.fetchval(f"SELECT count(DISTINCT event_id) FROM {history}")
        assert distinct == 220
    finally:
        await conn.close()
