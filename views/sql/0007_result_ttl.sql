-- 0007: the event's own expiry (TaskEvent v3's result_ttl_ms: how long the views keep
-- the task's state while this event is its latest; NULL: the folding process's
-- RESULTLOG_RESULT_TTL_S). Kept so that a fold of the history (the readers' fallback
-- while the Redis view is rebuilt, `resultlog verify`) expires a task as the view does.
-- Events written before it read NULL, as their records do.
ALTER TABLE {schema}.{history_table} ADD COLUMN result_ttl_ms bigint;
