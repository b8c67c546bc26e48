-- 0009: a task's row in the tasks view is its greatest-token event's attempt, so a forget
-- wins over every attempt, as in the fold.
--
-- 0002 took the task's last attempt (attempt = retries). A forget's record carries no
-- attempt (stored as 0), though its order token counts as the last possible attempt
-- (docs/contract.md): a task retried and then forgotten showed its last attempt's
-- outcome (SUCCESS, say) in `resultlog status` and the dashboard, where AsyncResult and
-- task_summary say it is forgotten. The greatest token is the last attempt's winner in
-- every other case, so nothing else changes; retries, first_seen, started and runtime
-- are still over all attempts. Same columns, in the same order (CREATE OR REPLACE VIEW).
CREATE OR REPLACE VIEW {schema}.tasks AS
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
           sum(a.runtime) OVER t AS runtime,
           max(a.token) OVER t AS winner
    FROM {schema}.attempts a
    WINDOW t AS (PARTITION BY a.task_id ORDER BY a.attempt
                 ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
) w
WHERE token = winner;
