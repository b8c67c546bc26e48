-- 0005: per-minute rollups of the history, kept by the history itself.
--
-- What the dashboard's overview (resultlog/dashboard/rollups.py) reads instead of the
-- events of its window: with a million tasks, a 24 h window holds hundreds of thousands
-- of events, but only 1,440 minutes times the task names.
--
-- {minutes_table}: per UTC minute and task name, how many events of each state.
-- {runtimes_table}: per span (a minute, and an hour so that long windows read 24 rows
--   an hour rather than 60), task name and runtime bucket, how many outcomes (RETRY,
--   FAILURE, SUCCESS, REVOKED events with a runtime) fell in it. Bucket b holds runtimes
--   in [2^(b/8), 2^((b+1)/8)) seconds: a percentile read from it is within 4.5% of the
--   exact one (resultlog/dashboard/histogram.py); runtime 0 is bucket -32768, runtimes
--   below 2^-20 s (~1 us) count in bucket -160.
--
-- Task name: the event's, else the task's latest known name (from {summary_table},
-- which its trigger has just updated: triggers on one event fire in name order, and
-- "{rollups_trigger}" sorts after "{summary_table}_fold"), else ''.
--
-- Kept like {summary_table}: a statement-level trigger folds the rows a statement
-- actually inserted (duplicates never reach it), in the writer's transaction, so a
-- replay or rebuild keeps the rollups too. The update is a sum, so batches in any order
-- agree. The rows are not split per Kafka partition: two processors writing the same
-- minute wait for each other's commit at the end of their transactions (row locks taken
-- in key order: no deadlock), which keeps a 24 h window at ~14,000 rows to read.
--
-- {rebuild_rollups_function}(from, to) recomputes the rollups of [from, to) (whole
-- hours) from the history: this migration's backfill, and `resultlog prune` for the
-- hour its cutoff falls in.
CREATE TABLE {schema}.{minutes_table} (
    minute    timestamptz NOT NULL,
    task_name text        NOT NULL,  -- '' : tasks no event named
    received  bigint      NOT NULL,
    started   bigint      NOT NULL,
    retry     bigint      NOT NULL,
    failure   bigint      NOT NULL,
    success   bigint      NOT NULL,
    revoked   bigint      NOT NULL,
    PRIMARY KEY (minute, task_name)
);

CREATE TABLE {schema}.{runtimes_table} (
    span_s    integer     NOT NULL CHECK (span_s IN (60, 3600)),
    start     timestamptz NOT NULL,
    task_name text        NOT NULL,
    bucket    smallint    NOT NULL,
    outcomes  bigint      NOT NULL,
    PRIMARY KEY (span_s, start, task_name, bucket)
);
-- One name's runtimes over a window (the overview's per-name plot).
CREATE INDEX {runtimes_table}_name_idx ON {schema}.{runtimes_table} (task_name, span_s, start);

-- The runtime bucket of a runtime in seconds (see above). Not STRICT, so that the
-- planner inlines it (a call costs some 4 us, the inlined expression 0.1 us).
CREATE FUNCTION {schema}.runtime_bucket(runtime double precision) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN runtime IS NULL THEN NULL
                WHEN runtime <= 0 THEN -32768
                -- In float8 throughout, as resultlog/dashboard/histogram.py computes it.
                ELSE floor(8 * ln(greatest(runtime, 2::float8 ^ -20)) / ln(2::float8))::smallint
           END;

CREATE FUNCTION {schema}.fold_rollups() RETURNS trigger
LANGUAGE plpgsql AS $fold$
BEGIN
    -- ORDER BY the key in each upsert: two writers of one minute take the row locks
    -- in the same order and cannot deadlock.
    WITH e AS MATERIALIZED (
        SELECT date_bin('1 minute', n.ts, timestamptz '1970-01-01 00:00+00') AS minute,
               coalesce(n.task_name,
                        (SELECT s.task_name FROM {schema}.{summary_table} s
                         WHERE s.task_id = n.task_id), '') AS task_name,
               n.state,
               CASE WHEN n.state IN ('RETRY', 'FAILURE', 'SUCCESS', 'REVOKED')
                    THEN {schema}.runtime_bucket(n.runtime) END AS bucket
        FROM new_rows n
    ), counted AS (
        INSERT INTO {schema}.{minutes_table} AS m
            (minute, task_name, received, started, retry, failure, success, revoked)
        SELECT e.minute, e.task_name,
               count(*) FILTER (WHERE e.state = 'RECEIVED'),
               count(*) FILTER (WHERE e.state = 'STARTED'),
               count(*) FILTER (WHERE e.state = 'RETRY'),
               count(*) FILTER (WHERE e.state = 'FAILURE'),
               count(*) FILTER (WHERE e.state = 'SUCCESS'),
               count(*) FILTER (WHERE e.state = 'REVOKED')
        FROM e GROUP BY e.minute, e.task_name
        ORDER BY e.minute, e.task_name
        ON CONFLICT (minute, task_name) DO UPDATE SET
            received = m.received + excluded.received, started = m.started + excluded.started,
            retry = m.retry + excluded.retry, failure = m.failure + excluded.failure,
            success = m.success + excluded.success, revoked = m.revoked + excluded.revoked
    )
    INSERT INTO {schema}.{runtimes_table} AS r (span_s, start, task_name, bucket, outcomes)
    SELECT x.span_s, x.start, x.task_name, x.bucket, count(*)
    FROM (
        SELECT 60 AS span_s, e.minute AS start, e.task_name, e.bucket
        FROM e WHERE e.bucket IS NOT NULL
        UNION ALL
        SELECT 3600, date_bin('1 hour', e.minute, timestamptz '1970-01-01 00:00+00'),
               e.task_name, e.bucket
        FROM e WHERE e.bucket IS NOT NULL
    ) x
    GROUP BY x.span_s, x.start, x.task_name, x.bucket
    ORDER BY x.span_s, x.start, x.task_name, x.bucket
    ON CONFLICT (span_s, start, task_name, bucket) DO UPDATE SET
        outcomes = r.outcomes + excluded.outcomes;
    RETURN NULL;
END
$fold$;

CREATE TRIGGER {rollups_trigger} AFTER INSERT ON {schema}.{history_table}
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.fold_rollups();

CREATE FUNCTION {schema}.{rebuild_rollups_function}(from_ts timestamptz, to_ts timestamptz)
RETURNS void
LANGUAGE plpgsql AS $rebuild$
BEGIN
    IF from_ts IS NULL OR to_ts IS NULL OR from_ts > to_ts
       OR date_bin('1 hour', from_ts, timestamptz '1970-01-01 00:00+00') <> from_ts
       OR date_bin('1 hour', to_ts, timestamptz '1970-01-01 00:00+00') <> to_ts THEN
        RAISE EXCEPTION 'rebuild_rollups(%, %): give whole UTC hours, from <= to', from_ts, to_ts
            USING ERRCODE = '22023';
    END IF;
    -- Writers of the history wait (their trigger's upserts need ROW EXCLUSIVE) until
    -- this transaction ends, and those already writing are waited for: the history read
    -- below then holds every event the rollups would otherwise count.
    LOCK TABLE {schema}.{minutes_table}, {schema}.{runtimes_table} IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM {schema}.{minutes_table} WHERE minute >= from_ts AND minute < to_ts;
    DELETE FROM {schema}.{runtimes_table} WHERE start >= from_ts AND start < to_ts;
    -- The trigger's aggregation, over the history instead of a statement's rows.
    WITH e AS MATERIALIZED (
        SELECT date_bin('1 minute', h.ts, timestamptz '1970-01-01 00:00+00') AS minute,
               coalesce(h.task_name,
                        (SELECT s.task_name FROM {schema}.{summary_table} s
                         WHERE s.task_id = h.task_id), '') AS task_name,
               h.state,
               CASE WHEN h.state IN ('RETRY', 'FAILURE', 'SUCCESS', 'REVOKED')
                    THEN {schema}.runtime_bucket(h.runtime) END AS bucket
        FROM {schema}.{history_table} h
        WHERE h.ts >= from_ts AND h.ts < to_ts
    ), counted AS (
        INSERT INTO {schema}.{minutes_table}
            (minute, task_name, received, started, retry, failure, success, revoked)
        SELECT e.minute, e.task_name,
               count(*) FILTER (WHERE e.state = 'RECEIVED'),
               count(*) FILTER (WHERE e.state = 'STARTED'),
               count(*) FILTER (WHERE e.state = 'RETRY'),
               count(*) FILTER (WHERE e.state = 'FAILURE'),
               count(*) FILTER (WHERE e.state = 'SUCCESS'),
               count(*) FILTER (WHERE e.state = 'REVOKED')
        FROM e GROUP BY e.minute, e.task_name
    )
    INSERT INTO {schema}.{runtimes_table} (span_s, start, task_name, bucket, outcomes)
    SELECT x.span_s, x.start, x.task_name, x.bucket, count(*)
    FROM (
        SELECT 60 AS span_s, e.minute AS start, e.task_name, e.bucket
        FROM e WHERE e.bucket IS NOT NULL
        UNION ALL
        SELECT 3600, date_bin('1 hour', e.minute, timestamptz '1970-01-01 00:00+00'),
               e.task_name, e.bucket
        FROM e WHERE e.bucket IS NOT NULL
    ) x
    GROUP BY x.span_s, x.start, x.task_name, x.bucket;
END
$rebuild$;

-- The history this migration finds (none in a new schema), folded once.
SELECT {schema}.{rebuild_rollups_function}(
    date_bin('1 hour', min(ts), timestamptz '1970-01-01 00:00+00'),
    date_bin('1 hour', max(ts), timestamptz '1970-01-01 00:00+00') + interval '1 hour')
FROM {schema}.{history_table} HAVING count(*) > 0;
