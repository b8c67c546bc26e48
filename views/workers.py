"""The workers views: the Redis workers view (who is alive now) and the Postgres
``worker_heartbeats`` table (every heartbeat, for SQL); docs/chicory.md, "Workers as events".

Redis (names from :mod:`resultlog.names`): ``{prefix}worker:{worker_id}``, a hash of the
heartbeat held (``token``, ``value``: its record as JSON) expiring at ``beat_at + ttl_s``,
and ``{prefix}workers``, worker id -> expiry, the index live workers are read from.
:data:`FOLD_SCRIPT` keeps per worker the heartbeat with the greatest token and never
writes an expired one (Redis's clock), so re-reading the log never brings a dead worker back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, Final

import redis.asyncio

from resultlog import names
from resultlog.schemas.taskrows import meta_json, to_pg_text
from resultlog.schemas.workers import WorkerHeartbeat
from resultlog.settings import Settings
from resultlog.redis_access import translated
from resultlog.views.migrations import quote_ident
from resultlog.views.pg import PooledStore, translate_errors

_NOW_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
# KEYS: the index, then one worker hash per heartbeat; ARGV: per heartbeat, worker id,
# token, expiry (ms), record JSON. Returns how many workers' entries changed.
FOLD_SCRIPT: Final = _NOW_LUA + """
local changed = 0
for i = 2, #KEYS do
  local b = (i - 2) * 4
  local expire_at = tonumber(ARGV[b + 3])
  if expire_at > now then
    local held = redis.call('HGET', KEYS[i], 'token')
    if not held or ARGV[b + 2] > held then
      redis.call('HSET', KEYS[i], 'token', ARGV[b + 2], 'value', ARGV[b + 4])
      redis.call('PEXPIREAT', KEYS[i], expire_at)
      redis.call('ZADD', KEYS[1], expire_at, ARGV[b + 1])
      changed = changed + 1
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return changed
"""
# KEYS: the index; ARGV: the worker key prefix. The live workers' records.
LIVE_SCRIPT: Final = _NOW_LUA + """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  local value = redis.call('HGET', ARGV[1] .. id, 'value')
  if value then out[#out + 1] = value end
end
return out
"""
# KEYS: the worker's hash. Its record unless expired, by LIVE_SCRIPT's rule (expired from
# its expiry's millisecond on): Redis keeps a key through that millisecond, and a worker
# read as gone by `live` was still there for a `get` in the same millisecond (a flaky
# test: get_heartbeat returned the worker get_active_workers had just dropped).
GET_SCRIPT: Final = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 or ttl == 0 then return false end
return redis.call('HGET', KEYS[1], 'value')
"""
# KEYS: the index; ARGV: a cut-off (ms). Drops index entries that expired before it.
PRUNE_SCRIPT: Final = "return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])"


class WorkersView:
    """The Redis workers view, on a client the caller owns."""

    def __init__(self, settings: Settings, client: redis.asyncio.Redis) -> None:
        self.settings = settings
        self.client = client
        self._fold = client.register_script(FOLD_SCRIPT)
        self._live = client.register_script(LIVE_SCRIPT)
        self._get = client.register_script(GET_SCRIPT)
        self._prune = client.register_script(PRUNE_SCRIPT)

    async def apply(self, heartbeats: Sequence[WorkerHeartbeat]) -> int:
        """Fold ``heartbeats`` (any order, duplicates welcome); how many entries changed."""
        if not heartbeats:
            return 0
        prefix = self.settings.redis_prefix
        keys = [names.workers_index_key(prefix)]
        args: list[Any] = []
        for hb in heartbeats:
            keys.append(names.worker_key(prefix, hb.worker_id))
            args += [hb.worker_id, hb.token, str(hb.expires_at),
                     json.dumps(hb.to_record(), separators=(",", ":"))]
        with translated("folding worker heartbeats"):
            return int(await self._fold(keys=keys, args=args))

    async def get(self, worker_id: str) -> WorkerHeartbeat | None:
        """The worker's latest heartbeat, if it has not expired."""
        with translated("reading a worker"):
            value = await self._get(keys=[names.worker_key(self.settings.redis_prefix, worker_id)])
        return None if value is None else WorkerHeartbeat.from_record(json.loads(value))

    async def live(self) -> list[WorkerHeartbeat]:
        """Every worker whose latest heartbeat has not expired, ordered by worker id."""
        prefix = self.settings.redis_prefix
        with translated("reading workers"):
            values = await self._live(keys=[names.workers_index_key(prefix)],
                                      args=[names.worker_key(prefix, "")])
        beats = [WorkerHeartbeat.from_record(json.loads(v)) for v in values]
        return sorted(beats, key=lambda hb: hb.worker_id)

    async def prune(self, stale_s: float) -> int:
        """Drop index entries of workers expired more than ``stale_s`` ago; how many."""
        cutoff = int(time.time() * 1000 - stale_s * 1000)
        with translated("pruning workers"):
            return int(await self._prune(keys=[names.workers_index_key(self.settings.redis_prefix)],
                                         args=[str(cutoff)]))


_COLUMNS: Final = ("event_id", "worker_id", "source", "hostname", "pid", "queue",
                   "concurrency", "tasks_processed", "tasks_failed", "active_tasks",
                   "started_at", "beat_at", "ttl_s", "is_running", "meta")


def heartbeat_row(hb: WorkerHeartbeat) -> tuple[Any, ...]:
    """``hb`` as the table's columns (times as ms: the INSERT converts them), its text
    stored as the history's is (``to_pg_text``, ``meta_json``): PostgreSQL refuses a
    NUL in text and jsonb, and a heartbeat whose row it refused stopped the processor
    at every start. The worker id so escaped also equals the task summary's."""
    return (to_pg_text(hb.event_id), to_pg_text(hb.worker_id), to_pg_text(hb.source),
            to_pg_text(hb.hostname), hb.pid, to_pg_text(hb.queue),
            hb.concurrency, hb.tasks_processed, hb.tasks_failed, hb.active_tasks,
            hb.started_at, hb.beat_at, hb.ttl_s, hb.is_running, meta_json(hb.meta))


class WorkersHistory(PooledStore):
    """Every heartbeat in ``{schema}.worker_heartbeats`` (migration 0003), once each:
    the insert is idempotent on ``event_id``, so re-read batches add nothing."""

    application_name = "resultlog-workers"

    def __init__(self, settings: Settings, pool: Any = None) -> None:
        super().__init__(settings, pool)
        table = f"{quote_ident(settings.postgres_schema)}.{names.WORKER_HEARTBEATS_TABLE}"
        self.table = table
        self._insert = (
            f"INSERT INTO {table} ({', '.join(_COLUMNS)}) "
            "SELECT e, w, s, h, p, q, c, tp, tf, a, to_timestamp(st / 1000.0), "
            "to_timestamp(b / 1000.0), ttl, r, m::jsonb FROM unnest("
            "$1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::int[], "
            "$8::bigint[], $9::bigint[], $10::int[], $11::bigint[], $12::bigint[], $13::int[], "
            "$14::bool[], $15::text[]) AS x(e, w, s, h, p, q, c, tp, tf, a, st, b, ttl, r, m) "
            "ON CONFLICT (event_id) DO NOTHING")

    async def write(self, heartbeats: Sequence[WorkerHeartbeat]) -> int:
        """Insert ``heartbeats``; returns how many were new."""
        if not heartbeats:
            return 0
        columns = [list(c) for c in zip(*(heartbeat_row(hb) for hb in heartbeats))]
        with translate_errors(self.settings):
            status: str = await self.pool.execute(self._insert, *columns)
        return int(status.rsplit(" ", 1)[1])
