-- 0006: task_summary's trigger (0004) folds a statement's rows in one sorted pass.
--
-- 0004 found each task's winner with DISTINCT ON, and its first_seen, name and worker
-- with a GROUP BY whose two array_agg(... ORDER BY token DESC) sort each task's rows
-- again (a sort per task and aggregate). Here one window over each task's rows, in
-- token order, gives all of it: the rows are sorted once, each window aggregate is
-- computed once per task (the frame is the whole task), and DISTINCT ON keeps the
-- first row of each task in that order, the winner. For 5,000 events (1,667 tasks) the
-- SELECT took 11-23 ms in 0004's form and 9-13 ms in this one on a "C" database, and
-- 33-93 ms against 8 ms under an ICU en-US collation (docs/benchmarks.md).
--
-- Tasks are sorted bytewise (COLLATE "C", the order of the summary's key) whatever the
-- database's collation: cheaper than a locale's, and every writer (all run this
-- function once it is migrated) takes the row locks in that one order.
--
-- Same result, row for row: the winner (greatest token), min(ts), and the name and
-- worker of the greatest-token row that carries one (array_agg keeps the window's
-- order; FILTER drops the rows without a value; [1] of none is NULL). Same upsert.
CREATE OR REPLACE FUNCTION {schema}.fold_task_summary() RETURNS trigger
LANGUAGE plpgsql AS $fold$
BEGIN
    INSERT INTO {schema}.{summary_table} AS s
        (task_id, first_seen, last_seen, attempt, token, state, task_name, worker,
         exception_type)
    SELECT DISTINCT ON (n.task_id COLLATE "C")
           n.task_id, min(n.ts) OVER task, n.ts, n.attempt, n.token, n.state,
           (array_agg(n.task_name) FILTER (WHERE n.task_name IS NOT NULL) OVER task)[1],
           (array_agg(n.worker) FILTER (WHERE n.worker IS NOT NULL) OVER task)[1],
           n.exception_type
    FROM new_rows n
    WINDOW task AS (PARTITION BY n.task_id COLLATE "C" ORDER BY n.token DESC
                    ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
    ORDER BY n.task_id COLLATE "C", n.token DESC
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
