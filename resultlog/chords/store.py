"""The Redis chord view: its layout, the aggregator's writes and the readers' reads and waits.

Layout of ``names.chord_key(prefix, chord_id)`` (a hash, written only by the chord
aggregator through :class:`ChordStore`):

- ``size``, ``done``, ``failed``: member counts (done = finished in any way);
- ``state``: PENDING (declared, nothing finished), STARTED (some members finished),
  SUCCESS or FAILURE (completed; never changes afterwards);
- on SUCCESS ``results``: JSON list of the members' results in index order;
- on FAILURE ``failed_task_id``, ``failed_index``, ``failed_state`` and ``exc_type``,
  ``exc_module``, ``exc_message`` of the member that failed the chord;
- ``completion_id``, ``date_done`` (ms since the epoch) once completed.

How it is written and waited on: docs/chords.md, "How it works" (last paragraph).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import redis.asyncio

from resultlog import names
from resultlog.background import stop_if_cancelled
from resultlog.chords.records import ChordCompleted, ChordProgress, FailedMember, exception_info
from resultlog.errors import ResultTimeout
from resultlog.schemas.states import PENDING, State
from resultlog.redis_access import text, translated
from resultlog.settings import Settings

if TYPE_CHECKING:
    from resultlog.views.aiostate import AioState

STARTED: Final = "STARTED"
_FINAL: Final = frozenset({State.SUCCESS.value, State.FAILURE.value})

PROGRESS_SCRIPT: Final = """
-- KEYS: chord hashes. ARGV[1]: "1" to expire; then per key: size, done, failed,
-- expire_at (ms, exact string)
local expiring = ARGV[1] == '1'
for i, key in ipairs(KEYS) do
  local base = 4 * (i - 1) + 1
  local size, done, failed = ARGV[base + 1], tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local expire_at = ARGV[base + 4]
  local cur = redis.call('HMGET', key, 'state', 'done', 'failed')
  local state = cur[1]
  -- A completed chord is the completion's alone: progress flushed by a background task
  -- can land after it, and must then change nothing (counts or expiry).
  if state ~= 'SUCCESS' and state ~= 'FAILURE' then
    if done > 0 then state = 'STARTED' elseif not state then state = 'PENDING' end
    redis.call('HSET', key, 'size', size, 'state', state)
    if done > tonumber(cur[2] or '0') then redis.call('HSET', key, 'done', done) end
    if failed > tonumber(cur[3] or '0') then redis.call('HSET', key, 'failed', failed) end
    -- Expiry from the log (the latest member's time), so a rebuild by replay is exact;
    -- never moved back by a stale update.
    if expiring and redis.call('PEXPIRETIME', key) < tonumber(expire_at) then
      redis.call('PEXPIREAT', key, expire_at)
    end
  end
end
return #KEYS
"""


@dataclass(frozen=True, slots=True)
class ChordView:
    """What the chord hash holds."""

    chord_id: str
    state: str  # PENDING, STARTED, SUCCESS or FAILURE
    size: int | None = None
    done: int = 0
    failed: int = 0
    results: str | None = None
    failed_member: FailedMember | None = None
    completion_id: str | None = None
    date_done: int | None = None

    @property
    def ready(self) -> bool:
        return self.state in _FINAL

    @property
    def succeeded(self) -> int:
        return self.done - self.failed


def chord_view_from_hash(chord_id: str, fields: Mapping[Any, Any]) -> ChordView:
    h = {text(k): text(v) for k, v in fields.items()}
    member = None
    if "failed_task_id" in h:
        exc = exception_info(h.get("exc_type"), h.get("exc_module"), h.get("exc_message"))
        member = FailedMember(h["failed_task_id"], int(h["failed_index"]),
                              State(h.get("failed_state", State.FAILURE.value)), exc)
    return ChordView(
        chord_id=chord_id,
        state=h.get("state", PENDING),
        size=int(h["size"]) if "size" in h else None,
        done=int(h.get("done", "0")),
        failed=int(h.get("failed", "0")),
        results=h.get("results"),
        failed_member=member,
        completion_id=h.get("completion_id"),
        date_done=int(h["date_done"]) if "date_done" in h else None,
    )


def chord_expire_at(timestamp_ms: int, ttl_s: int) -> int | None:
    """When the view drops a chord whose latest outcome is at ``timestamp_ms``: from the
    log, not the clock, so that a view rebuilt by replay (and what verify expects) is
    exact. None without a result TTL."""
    return timestamp_ms + ttl_s * 1000 if ttl_s else None


def completion_fields(completion: ChordCompleted) -> dict[str, str]:
    fields = {
        "state": completion.state.value, "size": str(completion.size),
        "done": str(completion.done), "failed": str(completion.failed),
        "completion_id": completion.event_id, "date_done": str(completion.timestamp),
    }
    if completion.results is not None:
        fields["results"] = completion.results
    m = completion.failed_member
    if m is not None:
        fields.update(failed_task_id=m.task_id, failed_index=str(m.index), failed_state=m.state.value)
        if m.exception is not None:
            fields.update(exc_type=m.exception.type, exc_module=m.exception.module,
                          exc_message=m.exception.message)
    return fields


class ChordStore:
    """The aggregator's writes to the chord view (asyncio). ``client`` is borrowed."""

    def __init__(self, settings: Settings, client: redis.asyncio.Redis) -> None:
        self.settings = settings
        self._client = client
        self._progress = client.register_script(PROGRESS_SCRIPT)

    async def progress(self, updates: Mapping[str, ChordProgress]) -> None:
        """Raise the counts of several chords in one call (a no-op on completed ones)."""
        if not updates:
            return
        prefix = self.settings.redis_prefix
        keys = [names.chord_key(prefix, chord_id) for chord_id in updates]
        ttl_s = self.settings.result_ttl_s
        args: list[str] = ["1" if ttl_s else "0"]
        for p in updates.values():
            args += [str(p.size), str(p.done), str(p.failed),
                     str(chord_expire_at(p.timestamp, ttl_s) or 0)]
        with translated("writing chord progress"):
            await self._progress(keys=keys, args=args)

    async def complete(self, completion: ChordCompleted) -> None:
        """Write the outcome and wake the waiters, atomically (MULTI/EXEC)."""
        prefix = self.settings.redis_prefix
        key = names.chord_key(prefix, completion.chord_id)
        fields: dict[Any, Any] = completion_fields(completion)
        with translated("writing a chord completion"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)
                expire_at = chord_expire_at(completion.timestamp, self.settings.result_ttl_s)
                if expire_at is not None:
                    pipe.pexpireat(key, expire_at)
                pipe.publish(names.chord_done_channel(prefix, completion.chord_id), completion.state.value)
                await pipe.execute()


async def read_chord(client: redis.asyncio.Redis, prefix: str, chord_id: str) -> ChordView:
    with translated("reading a chord"):
        fields = await client.hgetall(names.chord_key(prefix, chord_id))
    return chord_view_from_hash(chord_id, fields)


async def wait_chord(state: AioState, chord_id: str, timeout: float | None) -> ChordView:
    """The chord's view once it completed; :class:`ResultTimeout` after ``timeout`` s."""
    prefix = state.settings.redis_prefix
    async with state.op():
        deadline = state.deadline(timeout)
        view = await read_chord(state.client, prefix, chord_id)
        if view.ready:
            return view
        if deadline is not None and deadline <= state.loop.time():
            # Only what is ready now (timeout 0): no subscription to set up and drop.
            raise _not_in_time(chord_id, view)
        try:
            async with asyncio.timeout_at(deadline):
                async with state.notifier.watch(names.chord_done_channel(prefix, chord_id)) as watch:
                    # Subscribed first, read second: a completion before the
                    # subscription is seen by the read, one after it is pushed.
                    while True:
                        watch.clear()
                        view = await read_chord(state.client, prefix, chord_id)
                        if view.ready:
                            return view
                        stop_if_cancelled()  # as a task's wait (views/backend.py)
                        await watch.wait()
        except TimeoutError as exc:
            if isinstance(exc, ResultTimeout):
                raise
            raise _not_in_time(chord_id, view) from None


def _not_in_time(chord_id: str, view: ChordView) -> ResultTimeout:
    return ResultTimeout(
        f"chord {chord_id} did not complete in time "
        f"({view.done} of {view.size if view.size is not None else '?'} members finished)"
    )
