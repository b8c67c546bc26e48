-- 0004: task_summary, one row per task (the fold's winner), kept by the history itself.
--
-- What the dashboard's task list (resultlog/dashboard/tasklist.py) pages over: a list
-- filtered by state, name or worker and ordered by when each task was first seen,
-- read a page at a time by keyset (a page is one index range scan, whatever the page
-- number), where the `tasks` view of 0002 folds every event of every task it returns.
--
-- Kept by a statement-level trigger on the history: every writer (the processor, a
-- replay, a rebuild, a test) inserts into task_events, and only rows actually inserted
-- reach the transition table (ON CONFLICT DO NOTHING skips duplicates), so the summary
-- is updated in the same transaction as the history and the offsets: exactly once,
-- resumable, and rebuilt by a replay like everything else. The update is a maximum
-- over the order token, like the fold, so batches applied in any order agree.
--
-- Cost: one upsert per task per history batch (measured in docs/dashboard.md).
CREATE TABLE {schema}.{summary_table} (
    task_id        text COLLATE "C" PRIMARY KEY,  -- "C": LIKE 'prefix%' uses the index
    first_seen     timestamptz      NOT NULL,     -- earliest event of the task
    last_seen      timestamptz      NOT NULL,     -- the winning event's timestamp
    attempt        integer          NOT NULL,     -- the winner's attempt
    token          text COLLATE "C" NOT NULL,     -- the winner's order token
    state          text             NOT NULL,     -- the winner's state
    task_name      text,  -- from the latest event that carries one
    worker         text,  -- likewise
    exception_type text   -- the winner's
);

-- Keyset order: (first_seen, task_id) descending, optionally within one state, name or
-- worker. The worker index carries the state so the workers page counts failures from
-- the index alone.
CREATE INDEX {summary_table}_first_seen_idx ON {schema}.{summary_table} (first_seen, task_id);
CREATE INDEX {summary_table}_state_idx ON {schema}.{summary_table} (state, first_seen, task_id);
CREATE INDEX {summary_table}_name_idx ON {schema}.{summary_table} (task_name, first_seen, task_id);
CREATE INDEX {summary_table}_worker_idx ON {schema}.{summary_table} (worker, first_seen, task_id)
    INCLUDE (state);

CREATE FUNCTION {schema}.fold_task_summary() RETURNS trigger
LANGUAGE plpgsql AS $fold$
BEGIN
    -- One row per task of the statement, ORDER BY task_id: two writers upserting
    -- overlapping tasks take the row locks in the same order and cannot deadlock.
    INSERT INTO {schema}.{summary_table} AS s
        (task_id, first_seen, last_seen, attempt, token, state, task_name, worker,
         exception_type)
    SELECT w.task_id, f.first_seen, w.ts, w.attempt, w.token, w.state, f.task_name,
           f.worker, w.exception_type
    FROM (
        SELECT DISTINCT ON (n.task_id) n.task_id, n.ts, n.attempt, n.token, n.state,
               n.exception_type
        FROM new_rows n
        ORDER BY n.task_id, n.token DESC
    ) w
    JOIN (
        SELECT n.task_id, min(n.ts) AS first_seen,
               (array_agg(n.task_name ORDER BY n.token DESC)
                    FILTER (WHERE n.task_name IS NOT NULL))[1] AS task_name,
               (array_agg(n.worker ORDER BY n.token DESC)
                    FILTER (WHERE n.worker IS NOT NULL))[1] AS worker
        FROM new_rows n
        GROUP BY n.task_id
    ) f USING (task_id)
    ORDER BY w.task_id
    ON CONFLICT (task_id) DO UPDATE SET
        first_seen = least(s.first_seen, excluded.first_seen),
        last_seen = CASE WHEN excluded.token > s.token THEN excluded.last_seen ELSE s.last_seen END,
        attempt = CASE WHEN excluded.token > s.token THEN excluded.attempt ELSE s.attempt END,
        state = CASE WHEN excluded.token > s.token THEN excluded.state ELSE s.state END,
        exception_type = CASE WHEN excluded.token > s.token THEN excluded.exception_type
                              ELSE s.exception_type END,
        task_name = CASE WHEN excluded.token > s.token
                         THEN coalesce(excluded.task_name, s.task_name)
                         ELSE coalesce(s.task_name, excluded.task_name) END,
        worker = CASE WHEN excluded.token > s.token THEN coalesce(excluded.worker, s.worker)
                      ELSE coalesce(s.worker, excluded.worker) END,
        token = greatest(s.token, excluded.token);
    RETURN NULL;
END
$fold$;

CREATE TRIGGER {summary_table}_fold AFTER INSERT ON {schema}.{history_table}
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.fold_task_summary();

-- The history this migration finds (empty for a new schema) folded once.
INSERT INTO {schema}.{summary_table}
    (task_id, first_seen, last_seen, attempt, token, state, task_name, worker, exception_type)
SELECT w.task_id, f.first_seen, w.ts, w.attempt, w.token, w.state, f.task_name, f.worker,
       w.exception_type
FROM (
    SELECT DISTINCT ON (e.task_id) e.task_id, e.ts, e.attempt, e.token, e.state,
           e.exception_type
    FROM {schema}.{history_table} e
    ORDER BY e.task_id, e.token DESC
) w
JOIN (
    SELECT e.task_id, min(e.ts) AS first_seen,
           (array_agg(e.task_name ORDER BY e.token DESC)
                FILTER (WHERE e.task_name IS NOT NULL))[1] AS task_name,
           (array_agg(e.worker ORDER BY e.token DESC)
                FILTER (WHERE e.worker IS NOT NULL))[1] AS worker
    FROM {schema}.{history_table} e
    GROUP BY e.task_id
) f USING (task_id);

-- A task page's lineage: its children, its group's and its chord's members. Partial:
-- only the events that carry the id are indexed.
CREATE INDEX {history_table}_parent_id_idx ON {schema}.{history_table} (parent_id)
    WHERE parent_id IS NOT NULL;
CREATE INDEX {history_table}_group_id_idx ON {schema}.{history_table} (group_id)
    WHERE group_id IS NOT NULL;
CREATE INDEX {history_table}_chord_id_idx ON {schema}.{history_table} (chord_id)
    WHERE chord_id IS NOT NULL;
