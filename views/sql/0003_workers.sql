-- 0003: worker heartbeats (schemas/workers.py): every heartbeat the log holds, and one
-- row per worker session for uptime and throughput. Documented in docs/chicory.md,
-- "Workers as events".

-- One row per heartbeat; written by the processor, idempotent on event_id.
CREATE TABLE {schema}.{worker_heartbeats_table} (
    event_id        text PRIMARY KEY,
    worker_id       text NOT NULL,
    source          text NOT NULL,
    hostname        text NOT NULL,
    pid             integer NOT NULL,
    queue           text NOT NULL,
    concurrency     integer NOT NULL,
    tasks_processed bigint NOT NULL,
    tasks_failed    bigint NOT NULL,
    active_tasks    integer NOT NULL,
    started_at      timestamptz NOT NULL,
    beat_at         timestamptz NOT NULL,
    ttl_s           integer NOT NULL,
    is_running      boolean NOT NULL,
    meta            jsonb
);
CREATE INDEX ON {schema}.{worker_heartbeats_table} (worker_id, beat_at);
CREATE INDEX ON {schema}.{worker_heartbeats_table} (beat_at);

-- One row per worker session (a worker id and its started_at: a Chicory worker's id is
-- new at every start, a Celery worker's node name is not, so its restarts are sessions
-- of one id): its first and last heartbeat, its counters at the last one, whether it
-- said it stopped, and its throughput over its uptime.
CREATE VIEW {schema}.{worker_sessions_view} AS
SELECT worker_id,
       started_at,
       source,
       hostname,
       pid,
       queue,
       first_beat,
       last_beat,
       extract(epoch FROM last_beat - started_at)::double precision AS uptime_s,
       beats,
       tasks_processed,
       tasks_failed,
       NOT is_running AS stopped,
       tasks_processed / NULLIF(extract(epoch FROM last_beat - started_at), 0)::double precision
           AS tasks_per_s
FROM (
    SELECT DISTINCT ON (worker_id, started_at)
           worker_id, started_at, source, hostname, pid, queue, beat_at AS last_beat,
           tasks_processed, tasks_failed, is_running,
           min(beat_at) OVER (PARTITION BY worker_id, started_at) AS first_beat,
           count(*) OVER (PARTITION BY worker_id, started_at) AS beats
    FROM {schema}.{worker_heartbeats_table}
    ORDER BY worker_id, started_at, beat_at DESC, event_id DESC
) AS latest;
