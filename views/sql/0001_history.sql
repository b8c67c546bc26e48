-- 0001: the append-only event history, partitioned by day, and the consumed offsets.
--
-- Applied by views/migrations.py inside one transaction, under an advisory lock.
-- {schema} is the quoted schema name; {history_table}, {offsets_table} come from
-- resultlog/names.py. Never edit an applied migration: add 0002_*.sql instead.

-- Event time is carried as integer ms. make_interval(days, secs) is exact for every
-- timestamp an event may carry (0 .. 10^15-1 ms, i.e. up to year 33658), where
-- "epoch + ms * interval '1 ms'" goes through a double and drifts by microseconds
-- far out -- enough to route a row next to a day boundary into the wrong partition.
-- Partition bounds are computed with the same function, so routing always agrees.
CREATE FUNCTION {schema}.ms_to_timestamptz(ms bigint) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (timestamp '1970-01-01'
            + make_interval(days => (ms / 86400000)::int, secs => (ms % 86400000) / 1000.0))
           AT TIME ZONE 'UTC';

-- extract() returns numeric since PostgreSQL 14, so this is exact too.
CREATE FUNCTION {schema}.timestamptz_to_ms(ts timestamptz) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN (extract(epoch FROM ts) * 1000)::bigint;

-- One row per event, never updated. Fixed-width columns first (no alignment padding).
-- Text fields hold the event's strings exactly, except that U+0000, which PostgreSQL
-- text cannot store, is escaped reversibly as U+0001 '0' (and U+0001 as U+0001 U+0001);
-- strings without those two control characters are untouched (see views/history.py).
CREATE TABLE {schema}.{history_table} (
    event_id          uuid             NOT NULL,  -- 32 hex digits on the wire
    ts                timestamptz      NOT NULL,  -- the event's timestamp (ms), partition key
    runtime           double precision,           -- seconds
    eta_ms            bigint,                     -- RETRY: next attempt due, ms since the epoch
    kafka_offset      bigint           NOT NULL,
    attempt           integer          NOT NULL,
    chord_size        integer,
    chord_index       integer,
    kafka_partition   integer          NOT NULL,
    task_id           text             NOT NULL,
    state             text             NOT NULL,
    -- order_token(): fixed-width ASCII whose byte order is the fold's precedence. "C"
    -- collation makes ORDER BY compare bytes, whatever the database's locale.
    token             text COLLATE "C" NOT NULL,
    task_name         text,
    worker            text,
    args              text,  -- JSON text, byte-identical to the event's
    kwargs            text,  -- JSON text
    result            text,  -- JSON text
    exception_type    text,
    exception_module  text,
    exception_message text,
    traceback         text,
    parent_id         text,
    root_id           text,
    group_id          text,
    chord_id          text,
    meta              jsonb,  -- string headers; NULL when empty
    kafka_topic       text             NOT NULL
) PARTITION BY RANGE (ts);

-- Idempotency. A unique index on a partitioned table must include the partition key,
-- so it cannot be on event_id alone. It does not need to: ts is the event's own
-- timestamp, part of the immutable event, so a redelivered or replayed event always
-- carries the same (ts, event_id), lands in the same partition and collides there
-- (INSERT ... ON CONFLICT DO NOTHING skips it). ts leads, not event_id: event ids are
-- random, so an (event_id, ...) index takes inserts all over its pages, while (ts, ...)
-- grows at its right edge; it also serves time-range scans, so no separate (ts) index.
CREATE UNIQUE INDEX {history_table}_ts_event_id_key ON {schema}.{history_table} (ts, event_id);
-- history(task_id) / latest(task_id).
CREATE INDEX {history_table}_task_id_ts_idx ON {schema}.{history_table} (task_id, ts);
-- Per-task-name statistics over a time range.
CREATE INDEX {history_table}_task_name_ts_idx ON {schema}.{history_table} (task_name, ts);

-- Next offset to read per (consumer group, topic, partition), written in the same
-- transaction as the rows read below it: after a crash the processor seeks here, so
-- the history is exactly-once whatever Kafka's own committed offsets say.
CREATE TABLE {schema}.{offsets_table} (
    consumer_group  text        NOT NULL,
    kafka_topic     text        NOT NULL,
    kafka_partition integer     NOT NULL,
    next_offset     bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, kafka_topic, kafka_partition)
);
