"""The Redis latest-state view: one hash per task, folded by ``fold.lua``.

:meth:`RedisView.apply` folds a batch of events in one script call (EVALSHA; the
script is loaded again by redis-py if the server answers NOSCRIPT), or a batch of more
than :data:`PART_TASKS` tasks in parts, one call each. The script is
``schemas/fold.py`` verbatim: this module only lays the events out as arguments and
reads hashes back into :class:`~resultlog.schemas.fold.TaskView`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import redis.asyncio

from resultlog import names
from resultlog.errors import StoreUnavailable, ViewLost
from resultlog.schemas.event import ExceptionInfo, TaskEvent, validate_task_id, validate_task_ids
from resultlog.schemas.fold import STICKY_FIELDS, TaskView, visible
from resultlog.schemas.states import READY_STATES, State
from resultlog.schemas.taskrows import WINNER_HASH_FIELDS, view_row
from resultlog.settings import Settings
from resultlog.redis_access import async_client, text, translated
from resultlog.views.coverage import CHAIN_BROKEN, WHOLE_LUA, RebuildChain, ViewCoverage

SCRIPT: Final = Path(__file__).with_name("fold.lua").read_text(encoding="utf-8")
# Each key's HGETALL as ONE JSON string ("" for a missing key): redis-py parses a reply
# element by element in Python, ~25 per task, which made reading 333,000 tasks take
# half a minute; one string per task parsed by the json module's C code is ~5x less.
# With ARGV (the events topic, its partitions) the last key is the offsets hash and one
# more element says "1" if the view is whole (every partition has a position and none
# is being rebuilt: views/coverage.py), "0" if not, so a miss can be told from a task
# the view may have lost. Checked only on a miss.
READ_SCRIPT: Final = WHOLE_LUA + """
local n = #ARGV > 0 and #KEYS - 1 or #KEYS
local out, missed = {}, false
for i = 1, n do
  local fields = redis.call('HGETALL', KEYS[i])
  if #fields == 0 then out[i] = ''; missed = true else out[i] = cjson.encode(fields) end
end
if #ARGV == 0 then return out end
out[n + 1] = '1'
if missed and not view_whole(KEYS[n + 1], ARGV[1], tonumber(ARGV[2])) then out[n + 1] = '0' end
return out
"""

# Hash fields: schemas/taskrows.py holds the layout (WINNER_HASH_FIELDS, then sticky).
TOKEN: Final = "token"
STICKY_TOKEN_PREFIX: Final = "token:"

#: Tasks per fold call at most: Redis runs a script alone, so a larger batch is written
#: in parts and other clients are served between them (docs/processor.md, "Large batches").
PART_TASKS: Final = 100

_INT_FIELDS: Final = frozenset({"timestamp", "attempt", "eta", "chord_size", "chord_index"})
_HEADER: Final = (
    str(len(WINNER_HASH_FIELDS)), str(len(STICKY_FIELDS)), str(len(READY_STATES)),
    *WINNER_HASH_FIELDS, *STICKY_FIELDS, *sorted(s.value for s in READY_STATES),
)


def script_call(
    settings: Settings,
    events: Sequence[TaskEvent],
    offsets: Mapping[tuple[str, int], int] | None = None,
    consumer_group: str | None = None,
) -> tuple[list[str], list[str]]:
    """``(keys, args)`` for one ``fold.lua`` call folding ``events`` (and recording
    ``offsets`` for ``consumer_group`` in the same atomic call, when given)."""
    ttl_ms = settings.result_ttl_s * 1000
    return script_call_rows(settings, [e.task_id for e in events],
                            [view_row(e, ttl_ms) for e in events], offsets, consumer_group)


def script_call_rows(
    settings: Settings,
    task_ids: Sequence[str],
    rows: Sequence[list[Any]],
    offsets: Mapping[tuple[str, int], int] | None = None,
    consumer_group: str | None = None,
    starts: Mapping[tuple[str, int], int] | None = None,
    part: tuple[str, int, bool] | None = None,
) -> tuple[list[str], list[str]]:
    """:func:`script_call` for rows built by ``taskrows.view_row`` (``task_ids[i]`` is the
    task of ``rows[i]``). ``starts`` (with ``offsets``): where the batch begins in each
    partition, which the view must already cover (fold.lua's ARGV[4] "2"). ``part``:
    this call's place in a chain of calls, as (the chain's marker key, the call's number
    from 0, whether it is the last): with ``starts``, one part of a batch written in
    several, of which only the last records ``offsets`` (fold.lua's ARGV[4] "3");
    without ``offsets``, one call of a rebuild (ARGV[4] "4")."""
    prefix = settings.redis_prefix
    index: dict[str, int] = {}
    ks = []
    for task_id in task_ids:
        k = index.get(task_id)
        if k is None:
            k = index[task_id] = len(index) + 1
        ks.append(k)
    keys = [names.task_key(prefix, task_id) for task_id in index]
    with_offsets = offsets is not None
    if not with_offsets:
        mode = "0" if part is None else "4"
    else:
        mode = "3" if part is not None else "2" if starts is not None else "1"
    args = [*_HEADER[:3], mode, *_HEADER[3:]]
    args += [names.task_done_channel(prefix, task_id) for task_id in index]
    args.append(json.dumps(ks, separators=(",", ":")))
    args.append(json.dumps(rows, ensure_ascii=False, separators=(",", ":")))
    if offsets is not None:
        if not consumer_group:
            raise ValueError("recording offsets needs the consumer group")
        keys.append(names.offsets_key(prefix, consumer_group))
        args.append(json.dumps({names.position_field(t, p): o for (t, p), o in offsets.items()}))
        if starts is not None:
            args.append(json.dumps({names.position_field(t, p): o for (t, p), o in starts.items()}))
        if part is not None:
            if starts is None:
                raise ValueError("a batch written in parts needs where it starts")
            marker, number, last = part
            keys.append(marker)
            args += [str(number), "1" if last else "0"]
    elif part is not None:
        keys.append(part[0])
        args.append(str(part[1]))
    args.append(names.transitions_channel(prefix))
    return keys, args


def split_by_task(task_ids: Sequence[str], rows: Sequence[list[Any]], limit: int
                  ) -> list[tuple[Sequence[str], Sequence[list[Any]]]]:
    """``(task_ids, rows)`` in parts of at most ``limit`` tasks each, every task's rows
    in one part and in their order (parts in the order of each task's first row)."""
    if len(task_ids) <= limit:
        return [(task_ids, rows)]
    part_of: dict[str, int] = {}
    for task_id in task_ids:
        part_of.setdefault(task_id, len(part_of) // limit)
    parts: list[tuple[list[str], list[list[Any]]]] = [
        ([], []) for _ in range(-(-len(part_of) // limit))]
    for task_id, row in zip(task_ids, rows):
        ids, part_rows = parts[part_of[task_id]]
        ids.append(task_id)
        part_rows.append(row)
    return list(parts)


def view_from_hash(task_id: str, fields: Mapping[Any, Any]) -> TaskView | None:
    """The :class:`TaskView` a task hash holds (None for a missing or empty hash)."""
    h = {text(k): text(v) for k, v in fields.items()}
    token = h.get(TOKEN)
    if token is None:
        return None
    exception = None
    if "exc_type" in h:
        exception = ExceptionInfo(h["exc_type"], h.get("exc_module", ""), h.get("exc_message", ""))
    sticky: dict[str, Any] = {}
    tokens = []
    for name in STICKY_FIELDS:
        if name in h:
            sticky[name] = int(h[name]) if name in _INT_FIELDS else h[name]
            tokens.append((name, h.get(STICKY_TOKEN_PREFIX + name, "")))
    return TaskView(
        task_id=task_id,
        token=token,
        state=State(h["state"]),
        event_id=h["event_id"],
        timestamp=int(h["timestamp"]),
        attempt=int(h.get("attempt", "0")),
        worker=h.get("worker"),
        result=h.get("result"),
        exception=exception,
        traceback=h.get("traceback"),
        runtime=float(h["runtime"]) if "runtime" in h else None,
        eta=int(h["eta"]) if "eta" in h else None,
        sticky_tokens=tuple(sorted(tokens)),
        **sticky,
    )


def _pairs(flat: list[str]) -> dict[str, str]:
    """An HGETALL reply as cjson encodes it ([field, value, ...]) -> a dict."""
    return dict(zip(flat[::2], flat[1::2]))


def view_from_push(task_id: str, payload: str | None) -> TaskView | None:
    """The view a done-channel message carries, if it carries one (see fold.lua)."""
    if not payload or not payload.startswith("["):
        return None  # just the state name: the hash was too large to push
    return visible(view_from_hash(task_id, _pairs(json.loads(payload))))


def checked_read_call(settings: Settings, task_ids: Iterable[str]
                      ) -> tuple[list[str], list[str], list[str]]:
    """``(ids, keys, args)`` of one READ_SCRIPT call reading ``task_ids`` (checked, as a
    list: pass ``ids`` on to :func:`checked_read_reply`) and checking the view."""
    ids = validate_task_ids(task_ids)
    prefix = settings.redis_prefix
    keys = [names.task_key(prefix, t) for t in ids]
    keys.append(names.offsets_key(prefix, settings.consumer_group))
    return ids, keys, [settings.events_topic, str(settings.topic_partitions)]


def checked_read_reply(task_ids: Sequence[str], replies: Sequence[Any]
                       ) -> tuple[list[TaskView | None], bool]:
    """That call's reply: the views in order, and whether the view is whole."""
    views = [None if not r else visible(view_from_hash(t, _pairs(json.loads(text(r)))))
             for t, r in zip(task_ids, replies)]
    return views, text(replies[-1]) == "1"


class RedisView:
    """Folds event batches into Redis and reads tasks back (asyncio).

    ``client`` is borrowed, not closed; without one the view opens (and closes) its
    own from ``settings.redis_url``. ``part_tasks``: tasks per fold call at most
    (:data:`PART_TASKS`).
    """

    def __init__(self, settings: Settings, client: redis.asyncio.Redis | None = None, *,
                 part_tasks: int = PART_TASKS) -> None:
        if part_tasks < 1:
            raise ValueError(f"part_tasks must be at least 1, not {part_tasks}")
        self.settings = Settings.given(settings, "RedisView")
        self.part_tasks = part_tasks
        self._owns_client = client is None
        self._client = async_client(settings) if client is None else client
        self._script = self._client.register_script(SCRIPT)
        self._read = self._client.register_script(READ_SCRIPT)

    @property
    def client(self) -> redis.asyncio.Redis:
        return self._client

    async def apply(
        self,
        events: Sequence[TaskEvent],
        offsets: Mapping[tuple[str, int], int] | None = None,
        *,
        consumer_group: str | None = None,
    ) -> int:
        """Fold ``events`` (any order, duplicates welcome).

        ``offsets`` ((topic, partition) -> next offset to read) are recorded for
        ``consumer_group`` in the same atomic script call, never moving backwards: a
        processor that resumes from them cannot skip an event whose change is not in
        the view. Without offsets, more than :attr:`part_tasks` tasks are folded in
        several calls. Returns how many tasks' stored views changed.
        """
        ttl_ms = self.settings.result_ttl_s * 1000
        return await self.apply_rows([e.task_id for e in events],
                                     [view_row(e, ttl_ms) for e in events],
                                     offsets, consumer_group=consumer_group)

    async def apply_rows(
        self,
        task_ids: Sequence[str],
        rows: Sequence[list[Any]],
        offsets: Mapping[tuple[str, int], int] | None = None,
        *,
        consumer_group: str | None = None,
        starts: Mapping[tuple[str, int], int] | None = None,
        chain: RebuildChain | None = None,
    ) -> int:
        """:meth:`apply` for rows already built by ``taskrows.view_row`` (or
        ``taskrows.read_rows``); ``task_ids[i]`` is the task of ``rows[i]``.

        With ``starts`` (the live fold: where the batch begins in each partition) the
        view must already cover every start, else :class:`ViewLost` names the
        partitions (see ``views/coverage.py``).

        More than :attr:`part_tasks` tasks are written in parts, one call each, except
        with ``offsets`` but no ``starts`` (one atomic call); with ``starts`` only the
        last part records ``offsets`` (docs/processor.md, "Large batches").

        With ``chain`` (a rebuild's, no ``offsets``) every call proves the rebuild's
        earlier calls are in the view and counts itself, else :class:`ViewLost`."""
        if not rows and not offsets:
            return 0
        parts = split_by_task(task_ids, rows, self.part_tasks)
        if chain is None and (len(parts) == 1 or (offsets is not None and starts is None)):
            return await self._call(task_ids, rows, offsets, consumer_group, starts, None)
        changed = 0
        if chain is not None:
            if offsets is not None:
                raise ValueError("a rebuild's calls record no offsets")
            for part_ids, part_rows in parts:
                changed += await self._call(part_ids, part_rows, None, None, None,
                                            (chain.key, chain.written, False))
                chain.written += 1
            return changed
        if offsets is None:
            for part_ids, part_rows in parts:
                changed += await self._call(part_ids, part_rows, None, None, None, None)
            return changed
        if not consumer_group:
            raise ValueError("recording offsets needs the consumer group")
        marker = names.view_batch_marker_key(self.settings.redis_prefix, consumer_group,
                                             uuid.uuid4().hex)
        for number, (part_ids, part_rows) in enumerate(parts):
            changed += await self._call(part_ids, part_rows, offsets, consumer_group, starts,
                                        (marker, number, number == len(parts) - 1))
        return changed

    async def _call(self, task_ids: Sequence[str], rows: Sequence[list[Any]],
                    offsets: Mapping[tuple[str, int], int] | None, consumer_group: str | None,
                    starts: Mapping[tuple[str, int], int] | None,
                    part: tuple[str, int, bool] | None) -> int:
        keys, args = script_call_rows(self.settings, task_ids, rows, offsets, consumer_group,
                                      starts, part)
        with translated("folding events into the view"):
            changed = int(await self._script(keys=keys, args=args))
        if changed < 0 and starts is None:
            raise ViewLost(CHAIN_BROKEN)
        if changed < 0:
            assert starts is not None
            raise ViewLost(
                "the Redis view lacks events it had recorded as folded (restarted empty, "
                "flushed or failed over?) in partition(s) "
                + ", ".join(str(p) for _, p in sorted(starts)),
                tuple(sorted(p for _, p in starts)))
        return changed

    async def get(self, task_id: str) -> TaskView | None:
        validate_task_id(task_id)
        with translated("reading a task"):
            fields = await self._client.hgetall(names.task_key(self.settings.redis_prefix, task_id))
        return view_from_hash(task_id, fields)

    async def get_many(self, task_ids: Iterable[str]) -> list[TaskView | None]:
        """Several tasks in one round trip, in the order asked."""
        task_ids = validate_task_ids(task_ids)
        if not task_ids:
            return []
        prefix = self.settings.redis_prefix
        with translated("reading tasks"):
            replies = await self._read(keys=[names.task_key(prefix, t) for t in task_ids])
        return [None if not r else view_from_hash(t, _pairs(json.loads(r)))
                for t, r in zip(task_ids, replies)]

    async def read_checked(self, task_ids: Iterable[str]) -> tuple[list[TaskView | None], bool]:
        """:meth:`get_many`, and whether the view is whole: a task missing from a view
        that is not whole may be one the log holds (see ``views/coverage.py``)."""
        ids, keys, args = checked_read_call(self.settings, task_ids)
        with translated("reading tasks"):
            replies = await self._read(keys=keys, args=args)
        return checked_read_reply(ids, replies)

    async def forget(self, task_id: str) -> bool:
        """Drop the task's hash; True if there was one. A later event recreates it."""
        validate_task_id(task_id)
        with translated("forgetting a task"):
            return bool(await self._client.delete(names.task_key(self.settings.redis_prefix, task_id)))

    async def committed_offsets(self, consumer_group: str, topic: str) -> dict[int, int]:
        """The offsets recorded by :meth:`apply` for ``consumer_group`` in ``topic``."""
        coverage = ViewCoverage(self.settings, self._client, consumer_group, topic)
        return (await coverage.read()).positions

    async def task_ids(self) -> list[str]:
        """Every task id in the view (a SCAN: for tools and verification, not hot paths)."""
        prefix = self.settings.redis_prefix
        found: set[str] = set()
        with translated("listing tasks"):
            async for key in self._client.scan_iter(
                match=names.task_key_pattern(prefix), count=1000, _type="hash"
            ):
                found.add(names.task_id_from_key(prefix, text(key)))
        return sorted(found)

    async def check_access(self) -> None:
        """Raise the ConfigurationError naming the setting if Redis refuses us (wrong ACL
        user or password, untrusted certificate); a Redis that cannot be reached is
        left to the callers, which wait for it (StoreUnavailable is swallowed here)."""
        try:
            with translated("connecting"):
                await self._client.ping()
        except StoreUnavailable:
            pass

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> RedisView:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
