-- 0002: analytics over the history: the attempts and tasks views, task_stats().
--
-- The object names below are written out because views/migrations.py knows only the
-- placeholders of 0001; they must equal resultlog/names.py (ATTEMPTS_VIEW, TASKS_VIEW,
-- TASK_STATS_FUNCTION), which tests/integration/test_analytics.py checks.
-- Documented, with examples the tests run, in docs/analytics.md.
--
-- No index is added: every query here is served by 0001's indexes (EXPLAIN output in
-- docs/analytics.md). An index created on the partitioned table would be built on
-- every existing partition inside this migration's transaction, blocking writes for
-- as long as that takes on a large history.

-- One row per (task, attempt), from the attempt's winning event (greatest token).
--
-- Both windows sort by (task_id, attempt, token): the planner shares one sort between
-- them, and the views above can rely on that order without sorting again. A filter on
-- task_id reaches the table scan (it is in every PARTITION BY), so looking up one task
-- probes the (task_id, ts) index of each partition; other filters apply after the fold.
CREATE VIEW {schema}.attempts AS
SELECT task_id,
       attempt,
       -- The task's name as the fold sees it: the greatest-token event that has one.
       names[array_upper(names, 1)] AS task_name,
       state,
       worker,
       first_seen,
       started,
       CASE WHEN state IN ('RETRY', 'FAILURE', 'SUCCESS', 'REVOKED') THEN ts END AS finished,
       CASE WHEN state IN ('RETRY', 'FAILURE', 'SUCCESS', 'REVOKED') THEN runtime END AS runtime,
       CASE WHEN state IN ('RETRY', 'FAILURE', 'SUCCESS', 'REVOKED') THEN state END AS outcome,
       exception_type,
       exception_message,
       token
FROM (
    SELECT e.task_id, e.attempt, e.state, e.ts, e.worker, e.runtime, e.exception_type,
           e.exception_message, e.token,
           max(e.token) OVER a AS winner,
           min(e.ts) OVER a AS first_seen,
           min(e.ts) FILTER (WHERE e.state = 'STARTED') OVER a AS started,
           array_agg(e.task_name) FILTER (WHERE e.task_name IS NOT NULL) OVER t AS names
    FROM {schema}.{history_table} e
    WINDOW a AS (PARTITION BY e.task_id, e.attempt ORDER BY e.token
                 ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING),
           t AS (PARTITION BY e.task_id ORDER BY e.attempt, e.token
                 ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
) w
WHERE token = winner;

-- One row per task: the fold's winner (the last attempt's winning event) and totals.
CREATE VIEW {schema}.tasks AS
SELECT task_id,
       task_name,
       state,
       worker,
       retries,
       first_seen,
       started,
       CASE WHEN state IN ('FAILURE', 'SUCCESS', 'REVOKED') THEN finished END AS finished,
       runtime,
       exception_type,
       exception_message,
       token
FROM (
    SELECT a.task_id, a.attempt, a.task_name, a.state, a.worker, a.finished,
           a.exception_type, a.exception_message, a.token,
           max(a.attempt) OVER t AS retries,
           min(a.first_seen) OVER t AS first_seen,
           min(a.started) OVER t AS started,
           sum(a.runtime) OVER t AS runtime
    FROM {schema}.attempts a
    WINDOW t AS (PARTITION BY a.task_id ORDER BY a.attempt
                 ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
) w
WHERE attempt = retries;

-- Per task name and time bucket: outcomes of attempts, rates, runtime percentiles.
--
-- Reads task_events directly (not the attempts view) so that the time range reaches
-- the partitions and indexes: with a name, the (task_name, ts) index; without, the
-- (ts, event_id) index. Plain SQL with one SELECT, STABLE and not STRICT, so the
-- planner inlines it: the arguments become constants of the caller's query, which
-- prunes partitions and drops the branches of the name test at plan time.
--
-- An attempt counts in the bucket of its outcome event (RETRY, FAILURE, SUCCESS,
-- REVOKED). An attempt that reported two outcomes (a redelivered message run twice)
-- counts once, with the one that wins the fold. An outcome event without a task name
-- (the raw emitter does not repeat it) is named after its task, which costs one index
-- probe per partition for each such event.
CREATE FUNCTION {schema}.task_stats(bucket_width interval, from_ts timestamptz,
                                    to_ts timestamptz, only_name text DEFAULT NULL)
RETURNS TABLE (task_name text, bucket_start timestamptz, bucket_end timestamptz,
               outcomes bigint, succeeded bigint, failed bigint, retried bigint,
               revoked bigint, success_rate double precision,
               failure_rate double precision, retry_rate double precision,
               runtime_p50 double precision, runtime_p95 double precision,
               runtime_p99 double precision)
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    WITH outcome AS (
        SELECT e.task_id, e.attempt, e.token, e.state, e.ts, e.runtime, e.task_name AS name
        FROM {schema}.{history_table} e
        WHERE e.ts >= from_ts AND e.ts < to_ts
          AND e.state IN ('RETRY', 'FAILURE', 'SUCCESS', 'REVOKED')
          AND (e.task_name = only_name OR (only_name IS NULL AND e.task_name IS NOT NULL))
        UNION ALL
        SELECT e.task_id, e.attempt, e.token, e.state, e.ts, e.runtime, n.task_name
        FROM {schema}.{history_table} e
        LEFT JOIN LATERAL (
            SELECT x.task_name FROM {schema}.{history_table} x
            WHERE x.task_id = e.task_id AND x.task_name IS NOT NULL
            ORDER BY x.token DESC LIMIT 1
        ) n ON true
        WHERE e.ts >= from_ts AND e.ts < to_ts
          AND e.state IN ('RETRY', 'FAILURE', 'SUCCESS', 'REVOKED')
          AND e.task_name IS NULL
          AND (only_name IS NULL OR n.task_name = only_name)
    ), attempt_outcome AS (
        SELECT DISTINCT ON (o.task_id, o.attempt) o.name, o.state, o.runtime,
               CASE WHEN bucket_width IS NULL THEN from_ts
                    ELSE date_bin(bucket_width, o.ts, from_ts) END AS bucket
        FROM outcome o
        ORDER BY o.task_id, o.attempt, o.token DESC
    ), grouped AS (
        SELECT g.name, g.bucket, count(*) AS n,
               count(*) FILTER (WHERE g.state = 'SUCCESS') AS ok,
               count(*) FILTER (WHERE g.state = 'FAILURE') AS failed,
               count(*) FILTER (WHERE g.state = 'RETRY') AS retried,
               count(*) FILTER (WHERE g.state = 'REVOKED') AS revoked,
               -- One sort for the three; NULL runtimes are ignored.
               percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY g.runtime) AS p
        FROM attempt_outcome g
        GROUP BY g.name, g.bucket
    )
    SELECT r.name, r.bucket,
           least(r.bucket + coalesce(bucket_width, to_ts - from_ts), to_ts),
           r.n, r.ok, r.failed, r.retried, r.revoked,
           r.ok::double precision / r.n, r.failed::double precision / r.n,
           r.retried::double precision / r.n,
           r.p[1], r.p[2], r.p[3]
    FROM grouped r;
END;
