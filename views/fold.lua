--[[
fold.lua: fold a batch of task events into the Redis latest-state view, atomically.

This is schemas/fold.py (the specification) as one Redis script; views/redis_view.py
builds its arguments and reads the hashes back. The fold is a maximum over order
tokens, so applying a batch is a compare-and-set: a duplicate or late event never
moves a task backwards, and any order or split of the log folds to the same hashes.

Key layout (names built by resultlog/names.py):

  {prefix}task:{task_id}   one hash per task
      token              order token of the winner (the greatest-token event)
      -- winner fields: replaced together whenever the winner changes; a field the
      -- winner does not carry is deleted (absent field = null; "" is a value)
      state event_id timestamp attempt worker result
      exc_type exc_module exc_message traceback runtime eta
      date_done          the winner's timestamp, present only while it is ready
      -- sticky fields: each taken from the greatest-token event carrying a value
      task_name args kwargs parent_id root_id group_id chord_id chord_size chord_index
      meta               (the event meta map as JSON text: schemas/event.py meta_text)
      token:{field}      order token of the event each sticky field came from

  {prefix}done:{task_id}   channel: PUBLISHed whenever a batch moves the task's
                           winner (to any state: waiters wake on a ready one, Celery's
                           get(on_message=...) hears the others) and the key is kept,
                           if anyone is subscribed to it (or to any pattern). Payload:
                           the whole hash as a JSON array [field, value, ...] (what
                           HGETALL returns), so a woken waiter need not read it
                           again; just the state name if the values exceed
                           PUSH_LIMIT bytes (the waiter then reads the hash).
                           Waiters SUBSCRIBE first and read the hash second, so the
                           hash covers whatever was published before they listened.

Expiry is a function of the log, never of the wall clock at write time, so a view
rebuilt by replay is exact: PEXPIREAT the winner's expire_at (its timestamp plus its
own result_ttl_ms, or plus the caller's result_ttl_s when it carries none: computed by
the caller as an exact integer string, schemas/fold.py's expire_at), or PERSIST when
the winner does not expire. A winner whose expiry is already past makes Redis delete the key at
once, so such a task is simply not kept. Known limit: once a key has expired, a late
event that would have lost to the vanished winner recreates the key on its own; only
keeping tombstones could prevent that.

Token comparison: Lua's < and > on strings use strcoll(), not bytewise order. The
tokens are fixed-width strings of ASCII digits and lower-case hex digits, which every
locale collates in ASCII order, so strcoll agrees with the byte order the tokens are
built for. A missing token is "", which sorts below every real token.

Arguments (all strings):
  KEYS[k]        the hash of the k-th distinct task in the batch; when ARGV[4] is
                 "1" or "2", the last key is the offsets hash instead (see below),
                 with "3" the offsets hash and then the batch's marker, with "4" the
                 rebuild's marker
  ARGV[1..3]     W, S, R: number of winner fields, sticky fields, ready states
  ARGV[4]        "1" when the call also records consumed offsets, "2" when it also
                 requires the view to cover the batch (the live fold; see below),
                 "3" as "2" for one part of a batch written in several calls (see
                 below), "4" for a rebuild's call (no offsets; see below), else "0"
  next W+S+R     the winner field names, sticky field names, ready state names
  next #tasks    the done channel of each task key, in KEYS order
  next           JSON array: the key index k of each event's task, in event order
  next           the events, ONE JSON array (decoded by cjson: one argument instead
                 of 25 per event is what makes large batches cheap to send), each
                 event an array:
                   token, expire_at ("" when not expiring),
                   presence mask (W+S chars, "1" = the field has a value),
                   then the values of the present fields only, in field order
                   (sparse: most events carry few of the W + S fields, and cjson's
                   cost grows with the items it decodes)
  next (opt.)    offsets: JSON object {"topic:partition": next_offset}, written to the
                 offsets hash with a maximum, in the same atomic call as the views,
                 so a processor restarting from these offsets never skips an event
                 whose view change is not in Redis.
  next (ARGV[4] "2", "3") JSON object {"topic:partition": first_offset}: where the batch
                 starts in each partition. Every such partition's recorded offset must
                 exist and be at least that start, else the view lost what it says it
                 holds (Redis restarted empty, flushed, failed over, the hash evicted):
                 the call writes nothing and returns -1, and the processor claims the
                 gap and rebuilds it (views/coverage.py). Without this check a live
                 write would recreate the offsets hash and hide the loss for ever.
  next 2 (ARGV[4] "3") the part's number (0 for the first) and "1" if it is the last
                 part, else "0". A large batch is written in parts so that Redis,
                 which runs a script alone, serves its other clients in between. The
                 last key is then the batch's marker (after the offsets hash): the
                 number of parts written so far. A part writes nothing and returns -1
                 unless the marker says exactly the parts before it are written (a
                 Redis that lost one, restarted or failed over to a replica behind it,
                 lost the marker's later value with it: Redis keeps writes in order),
                 so only the last part records the offsets, and only with every part
                 of its batch in the view. The marker expires after MARKER_TTL_MS (a
                 batch whose writer died between parts leaves it behind).
  next (ARGV[4] "4") the call's number in its rebuild (0 for the first). A rebuild
                 (processors/rebuild.py) records its progress in separate calls
                 (views/coverage.py, ADVANCE_SCRIPT); the marker, the last key, counts
                 the rebuild's calls in the view, so that a Redis that lost one (and so
                 the marker's later count) is found by the next call, which writes
                 nothing and returns -1, or by the next progress record, which refuses.

  {prefix}transitions      channel: when it has a subscriber (SUBSCRIBE, not pattern),
                           each call PUBLISHes ONE message listing the tasks whose
                           winner it moved, as a JSON array of
                           [task key, state, timestamp, attempt, worker|false,
                            task_name|false (false: not in this batch)],
                           for live displays (the dashboard); at most MOVED_LIMIT
                           tasks per message. ARGV[#ARGV] names it.

  {prefix}offsets:{consumer group}   hash: "topic:partition" -> next offset to read
Returns the number of tasks whose stored view changed, or -1 (see ARGV[4] "2" to "4").
]]

local PUSH_LIMIT = 65536
local MOVED_LIMIT = 500  -- tasks listed per transitions message
local MARKER_TTL_MS = 3600000
local byte, call = string.byte, redis.call  -- locals: no global lookups in the loops
local nwin, nsticky, nready = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local mode = ARGV[4]
local with_offsets = mode == '1' or mode == '2' or mode == '3'
local ntasks = #KEYS
local okey, marker = nil, nil
if mode == '3' then
  okey, marker = KEYS[#KEYS - 1], KEYS[#KEYS]
  ntasks = ntasks - 2
elseif mode == '4' then
  marker = KEYS[#KEYS]
  ntasks = ntasks - 1
elseif with_offsets then
  okey = KEYS[#KEYS]
  ntasks = ntasks - 1
end
local pos = 5
local win_fields, sticky_fields, sticky_token_fields, ready = {}, {}, {}, {}
for i = 1, nwin do win_fields[i] = ARGV[pos]; pos = pos + 1 end
for i = 1, nsticky do
  sticky_fields[i] = ARGV[pos]
  sticky_token_fields[i] = 'token:' .. ARGV[pos]
  pos = pos + 1
end
for _ = 1, nready do ready[ARGV[pos]] = true; pos = pos + 1 end
local channels = {}
for k = 1, ntasks do channels[k] = ARGV[pos]; pos = pos + 1 end
local event_keys = cjson.decode(ARGV[pos])
local events = cjson.decode(ARGV[pos + 1])
local offsets = nil
if with_offsets then offsets = cjson.decode(ARGV[pos + 2]) end
if mode == '2' or mode == '3' then
  for field, first in pairs(cjson.decode(ARGV[pos + 3])) do
    local current = tonumber(call('HGET', okey, field))
    if current == nil or current < first then return -1 end
  end
end
local part, last_part = 0, true
if mode == '3' then
  part, last_part = tonumber(ARGV[pos + 4]), ARGV[pos + 5] == '1'
elseif mode == '4' then
  part, last_part = tonumber(ARGV[pos + 2]), false
end
if marker and tonumber(call('GET', marker) or '0') ~= part then return -1 end

local state_slot = nil
for i = 1, nwin do if win_fields[i] == 'state' then state_slot = i end end
local timestamp_slot, attempt_slot, worker_slot, name_slot = nil, nil, nil, nil
for i = 1, nwin do
  local f = win_fields[i]
  if f == 'timestamp' then timestamp_slot = i
  elseif f == 'attempt' then attempt_slot = i
  elseif f == 'worker' then worker_slot = i end
end
for j = 1, nsticky do if sticky_fields[j] == 'task_name' then name_slot = j end end

-- The W + S values of event ev by field position (nil = absent), from its sparse
-- form; built only for the events that win something.
local function values(ev)
  local full = ev.full
  if full then return full end
  full = {}
  local mask, at = ev[3], 4
  for i = 1, nwin + nsticky do
    if byte(mask, i) == 49 then full[i] = ev[at]; at = at + 1 end  -- 49 = '1'
  end
  ev.full = full
  return full
end

-- Pass 1: fold the batch in memory against each task's stored tokens (read once per
-- task). Several events of one task in the batch are just more candidates for the
-- same maxima, so the batch is folded exactly as if its events came one by one.
local tasks = {}
for e = 1, #events do
  local ev = events[e]
  local k, token = event_keys[e], ev[1]
  local t = tasks[k]
  if t == nil then
    local stored = call('HMGET', KEYS[k], 'token', unpack(sticky_token_fields))
    t = {existed = stored[1] ~= false, win = stored[1] or '', win_at = nil,
         sticky = {}, sticky_at = {}}
    for j = 1, nsticky do t.sticky[j] = stored[j + 1] or '' end
    tasks[k] = t
  end
  if token > t.win then t.win = token; t.win_at = ev end
  local mask = ev[3]
  for j = 1, nsticky do
    if byte(mask, nwin + j) == 49 and token > t.sticky[j] then  -- 49 = '1'
      t.sticky[j] = token
      t.sticky_at[j] = ev
    end
  end
end

-- Pass 2: one write per task that changed.
-- A push nobody hears costs an HGETALL and an encode per changed task (a fifth of a
-- replay's Redis time for its ready ones alone), so a task's channel is asked first
-- (~1 us); pattern subscribers may hear any channel, so with any of those every push
-- is made.
local listened = call('PUBSUB', 'NUMPAT') > 0
local transitions_channel = ARGV[#ARGV]
local watched = call('PUBSUB', 'NUMSUB', transitions_channel)[2] > 0
local moved, nmoved = {}, 0
local changed = 0
for k = 1, ntasks do
  local t = tasks[k]
  local key = KEYS[k]
  local set, del, ns, nd = {}, {}, 0, 0
  local state = nil
  if t.win_at then
    local full = values(t.win_at)
    set[1] = 'token'; set[2] = t.win
    ns = 2
    for i = 1, nwin do
      local v = full[i]
      if v ~= nil then
        set[ns + 1] = win_fields[i]; set[ns + 2] = v; ns = ns + 2
      else
        nd = nd + 1; del[nd] = win_fields[i]
      end
    end
    state = full[state_slot]
    if ready[state] then
      set[ns + 1] = 'date_done'; set[ns + 2] = full[timestamp_slot]; ns = ns + 2
    else
      nd = nd + 1; del[nd] = 'date_done'
    end
  end
  local sticky_at = t.sticky_at
  for j = 1, nsticky do
    local at = sticky_at[j]
    if at then
      set[ns + 1] = sticky_fields[j]; set[ns + 2] = values(at)[nwin + j]
      set[ns + 3] = sticky_token_fields[j]; set[ns + 4] = t.sticky[j]
      ns = ns + 4
    end
  end
  if ns > 0 then
    call('HSET', key, unpack(set))
    -- A key new in this batch holds only what was just set.
    if nd > 0 and t.existed then call('HDEL', key, unpack(del)) end
    local kept = true
    if t.win_at then
      -- Expiry follows the winner only, so it is recomputed only when the winner moves.
      local expire_at = t.win_at[2]
      if expire_at ~= '' then
        call('PEXPIREAT', key, expire_at)
        kept = call('EXISTS', key) == 1
      elseif t.existed then
        call('PERSIST', key)
      end
      -- A live display shows a sample of a large batch (a replay's), not all of it.
      if watched and nmoved < MOVED_LIMIT then
        local full = values(t.win_at)
        local name = false
        local named = name_slot and t.sticky_at[name_slot]
        if named then name = values(named)[nwin + name_slot] end
        nmoved = nmoved + 1
        moved[nmoved] = {key, state, full[timestamp_slot], full[attempt_slot],
                         full[worker_slot] or false, name}
      end
      if kept and (listened or call('PUBSUB', 'NUMSUB', channels[k])[2] > 0) then
        local fields = call('HGETALL', key)
        local size = 0
        for i = 2, #fields, 2 do size = size + #fields[i] end
        local payload = state
        if size <= PUSH_LIMIT then payload = cjson.encode(fields) end
        call('PUBLISH', channels[k], payload)
      end
    end
    if kept or t.existed then changed = changed + 1 end
  end
end
if nmoved > 0 then call('PUBLISH', transitions_channel, cjson.encode(moved)) end
if with_offsets and last_part then
  for field, next_offset in pairs(offsets) do
    local current = tonumber(call('HGET', okey, field))
    if current == nil or next_offset > current then
      call('HSET', okey, field, string.format('%d', next_offset))
    end
  end
end
if marker then
  if last_part then call('DEL', marker)
  else call('SET', marker, string.format('%d', part + 1), 'PX', MARKER_TTL_MS) end
end
return changed
