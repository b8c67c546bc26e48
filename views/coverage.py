"""What part of the log the Redis view covers: positions, gaps, and whether it is whole.

The offsets hash (``names.offsets_key``, written in the same ``fold.lua`` call as the
data), how a loss is noticed, claimed (:meth:`ViewCoverage.claim`) and rebuilt
(``processors/rebuild.py``): docs/processor.md, "The view heals itself". Readers ask
:meth:`ViewCoverage.whole`: a miss in a view that is not whole is not PENDING
(``views/backend.py`` falls back to the history).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import redis.asyncio

from resultlog import names
from resultlog.errors import ViewLost
from resultlog.settings import Settings
from resultlog.redis_access import text, translated

# Claims, per partition p (ARGV: topic, the chords mark's field, a new token for it, then
# p, begin, end, known per partition):
#  - no position: the view knows nothing of p; position := end, gap := [begin, end);
#  - a position below ``known`` (what this processor had written: the view went back
#    to an older copy, e.g. a failover to a lagging replica): gap grows by
#    [position, known), position := known.
# An existing gap is merged (smallest start, largest end), so two claims of the same
# partition, from one processor or two, never shrink what is to be rebuilt.
# A claim that found no hash at all (the view's whole record gone, and the chord views
# with it: Redis restarted empty or flushed) and records a gap sets the chords mark to
# the token, in this same call: a processor killed after the claim leaves the mark
# beside the gaps, and whoever claims next finds both (``processors/rebuild.py``).
# Returns, per partition in ARGV order, its gap after the claim ("" if none), then the
# chords mark ("" if none).
CLAIM_SCRIPT: Final = """
local okey, topic, mark, out = KEYS[1], ARGV[1], ARGV[2], {}
local fresh, gapped = redis.call('EXISTS', okey) == 0, false
local function add_gap(f, s, e)
  if s >= e then return end
  gapped = true
  local g = redis.call('HGET', okey, 'gap:' .. f)
  if g then
    local gs, ge = string.match(g, '^(%d+):(%d+)$')
    s = math.min(s, tonumber(gs)); e = math.max(e, tonumber(ge))
  end
  redis.call('HSET', okey, 'gap:' .. f, string.format('%d:%d', s, e))
end
for i = 4, #ARGV, 4 do
  local f = topic .. ':' .. ARGV[i]
  local begin, stop, known = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local cur = redis.call('HGET', okey, f)
  if not cur then
    redis.call('HSET', okey, f, string.format('%d', stop))
    add_gap(f, begin, stop)
  elseif known >= 0 and tonumber(cur) < known then
    add_gap(f, tonumber(cur), known)
    redis.call('HSET', okey, f, string.format('%d', known))
  end
  out[#out + 1] = redis.call('HGET', okey, 'gap:' .. f) or ''
end
if fresh and gapped then redis.call('HSET', okey, mark, ARGV[3]) end
out[#out + 1] = redis.call('HGET', okey, mark) or ''
return out
"""

# The chord views rebuilt (KEYS: the offsets hash; ARGV: the mark's field, the token the
# rebuild began with): the mark is removed only if it is still that token. A mark set
# since (the view lost again, claimed again) asks for another rebuild, which is queued.
CHORDS_REBUILT_SCRIPT: Final = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

#: The offsets hash's field marking the chord views as lost and not rebuilt yet (its
#: value a token unique to the claim that set it; no topic name holds a ':').
CHORDS_LOST_FIELD: Final = "chords:lost"

# A rebuild's progress (KEYS: the offsets hash, the rebuild's chain marker; ARGV: position
# field, the gap's end as claimed, the new start, the rebuild's fold calls so far).
# Returns -2 if the view lacks one of those calls (see RebuildChain: ViewCoverage.advance
# raises ViewLost), -1 if it lost the partition again (the next claim starts over), 0 if
# the gap is no longer the one being rebuilt (merged or done elsewhere), 1 if moved on.
ADVANCE_SCRIPT: Final = """
local okey, f = KEYS[1], ARGV[1]
if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[4]) then return -2 end
if redis.call('HEXISTS', okey, f) == 0 then return -1 end
local g = redis.call('HGET', okey, 'gap:' .. f)
if not g then return 0 end
local gs, ge = string.match(g, '^(%d+):(%d+)$')
if ge ~= ARGV[2] then return 0 end
if tonumber(ARGV[3]) >= tonumber(ge) then
  redis.call('HDEL', okey, 'gap:' .. f)
elseif tonumber(ARGV[3]) > tonumber(gs) then
  redis.call('HSET', okey, 'gap:' .. f, ARGV[3] .. ':' .. ge)
end
return 1
"""

# Lua for "is the view whole?" (OKEY: the offsets hash, TOPIC, NPART): every partition
# has a position and none has a gap. Shared by WHOLE_SCRIPT and the read scripts.
WHOLE_LUA: Final = """
local function view_whole(okey, topic, npart)
  local h = redis.call('HGETALL', okey)
  if #h == 0 then return false end
  local have, n = {}, 0
  local head, gap_head = topic .. ':', 'gap:' .. topic .. ':'
  for i = 1, #h, 2 do
    local f = h[i]
    if string.sub(f, 1, #gap_head) == gap_head then return false end
    if string.sub(f, 1, #head) == head then
      local p = tonumber(string.sub(f, #head + 1))
      if p and p < npart and not have[p] then have[p] = true; n = n + 1 end
    end
  end
  return n >= npart
end
"""
WHOLE_SCRIPT: Final = WHOLE_LUA + """
if view_whole(KEYS[1], ARGV[1], tonumber(ARGV[2])) then return 1 end
return 0
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """What a processor knows of one partition when it claims it."""

    begin: int  # the log's first offset: where a view that knows nothing starts
    resume: int  # where the processor's history is complete to (the gap's end)
    known: int = -1  # the position this processor last saw the view reach (-1: none)


@dataclass(slots=True)
class RebuildChain:
    """One rebuild's writes to the view, proved unbroken. Its fold calls and its progress
    records are separate Redis calls, and a Redis that restarts from its files or fails
    over to a replica loses its latest writes; the rebuild's next call would go on as if
    the lost one had landed, and record progress past events the view never got.
    ``key`` counts the rebuild's fold calls in the view: each call checks and increments
    it (``fold.lua``, ARGV[4] "4"), each progress record checks it (``ADVANCE_SCRIPT``).
    Redis applies and keeps writes in one order, so a copy without a call has the count
    from before it, and the rebuild starts again from the progress it still records."""

    key: str
    written: int = 0  # fold calls of this rebuild the view holds


#: What :class:`~resultlog.errors.ViewLost` says when a rebuild's chain is broken.
CHAIN_BROKEN: Final = ("the Redis view lacks a write of this rebuild (restarted or failed "
                       "over?): the rebuild starts again from its recorded progress")


@dataclass(frozen=True, slots=True)
class Claimed:
    """What a claim leaves to rebuild."""

    gaps: dict[int, tuple[int, int]]  # per claimed partition with one, its gap
    chords_lost: str | None  # the chords mark's token if the chord views are to be rebuilt


@dataclass(frozen=True, slots=True)
class Coverage:
    positions: dict[int, int]
    gaps: dict[int, tuple[int, int]]


def parse_gap(value: str) -> tuple[int, int] | None:
    if not value:
        return None
    start, _, end = value.partition(":")
    return int(start), int(end)


class ViewCoverage:
    """The Redis view's record of what it holds, for one consumer group and topic."""

    def __init__(self, settings: Settings, client: redis.asyncio.Redis, consumer_group: str,
                 topic: str | None = None) -> None:
        self.settings = settings
        self.client = client
        self.topic = topic or settings.events_topic
        self.consumer_group = consumer_group
        self.key = names.offsets_key(settings.redis_prefix, consumer_group)
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._chords_rebuilt = client.register_script(CHORDS_REBUILT_SCRIPT)
        self._advance = client.register_script(ADVANCE_SCRIPT)
        self._whole = client.register_script(WHOLE_SCRIPT)

    async def read(self) -> Coverage:
        with translated("reading the view's positions"):
            raw = await self.client.hgetall(self.key)
        positions: dict[int, int] = {}
        gaps: dict[int, tuple[int, int]] = {}
        head = self.topic + ":"
        for field, value in raw.items():
            f, v = text(field), text(value)
            if f.startswith(names.GAP_FIELD_PREFIX + head):
                gap = parse_gap(v)
                if gap is not None:
                    gaps[int(f[len(names.GAP_FIELD_PREFIX + head):])] = gap
            elif f.startswith(head) and f[len(head):].isdigit():
                positions[int(f[len(head):])] = int(v)
        return Coverage(positions, gaps)

    async def claim(self, claims: Mapping[int, Claim]) -> Claimed:
        """Record positions for partitions the view knows nothing of (or went back on),
        with the gaps before them; returns each claimed partition's gap to rebuild, and
        the chords mark if the chord views are to be rebuilt (set now or left by an
        earlier claim whose rebuild has not finished)."""
        if not claims:
            return Claimed({}, None)
        order = sorted(claims)
        args: list[str] = [self.topic, CHORDS_LOST_FIELD, uuid.uuid4().hex]
        for p in order:
            c = claims[p]
            args += [str(p), str(c.begin), str(max(c.begin, c.resume)), str(c.known)]
        with translated("claiming the view's partitions"):
            replies = await self._claim(keys=[self.key], args=args)
        out: dict[int, tuple[int, int]] = {}
        for p, reply in zip(order, replies):
            gap = parse_gap(text(reply))
            if gap is not None:
                out[p] = gap
        return Claimed(out, text(replies[-1]) or None)

    async def chords_rebuilt(self, mark: str) -> bool:
        """The chord views were rebuilt from the chords topic after the chords mark
        ``mark`` was seen: remove it unless it has been set again since."""
        with translated("recording the chord views rebuilt"):
            return bool(await self._chords_rebuilt(keys=[self.key],
                                                   args=[CHORDS_LOST_FIELD, mark]))

    def chain(self) -> RebuildChain:
        """A new rebuild's chain (its marker key is unique to it)."""
        return RebuildChain(names.view_batch_marker_key(
            self.settings.redis_prefix, self.consumer_group, "rebuild-" + uuid.uuid4().hex))

    async def advance(self, partition: int, gap_end: int, new_start: int,
                      chain: RebuildChain) -> int:
        """Record a rebuild's progress (see ADVANCE_SCRIPT for the answer); raises
        :class:`~resultlog.errors.ViewLost` if the view lacks one of its writes."""
        with translated("recording a rebuild's progress"):
            answer = int(await self._advance(
                keys=[self.key, chain.key],
                args=[names.position_field(self.topic, partition), str(gap_end), str(new_start),
                      str(chain.written)]))
        if answer == -2:
            raise ViewLost(CHAIN_BROKEN)
        return answer

    async def end(self, chain: RebuildChain) -> None:
        """Remove a finished rebuild's marker (left alone, it would expire in an hour)."""
        with translated("ending a rebuild"):
            await self.client.delete(chain.key)

    async def missing(self, partitions: set[int]) -> set[int]:
        """Which of ``partitions`` the view has no position for (one round trip)."""
        if not partitions:
            return set()
        order = sorted(partitions)
        with translated("checking the view's positions"):
            values = await self.client.hmget(
                self.key, [names.position_field(self.topic, p) for p in order])
        return {p for p, v in zip(order, values) if v is None}

    async def whole(self) -> bool:
        """Every partition has a position and none is being rebuilt."""
        with translated("checking whether the view is whole"):
            return bool(await self._whole(
                keys=[self.key], args=[self.topic, str(self.settings.topic_partitions)]))
