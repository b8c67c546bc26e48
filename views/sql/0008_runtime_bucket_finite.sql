-- 0008: a runtime that is not a finite number counts in no runtime bucket.
--
-- The contract's runtime is any double (docs/contract.md): resultlog's own emitters
-- refuse NaN and infinities, but a record another producer wrote may carry them. 0005's
-- runtime_bucket cast ln(Infinity) and ln(NaN) (NaN sorts above every number in
-- PostgreSQL, so greatest() kept it) to smallint, which failed the rollups trigger, so
-- the history's write of the whole batch, at every restart of the processor. Such a
-- runtime now has no bucket (NULL), as an outcome without a runtime: the outcome is
-- still counted per minute, and the percentiles read from the buckets are not moved by
-- a duration that is not one. -Infinity is <= 0: the zero bucket, as any negative.
-- Not STRICT, for the same reason as 0005's (the planner inlines it).
CREATE OR REPLACE FUNCTION {schema}.runtime_bucket(runtime double precision) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN runtime IS NULL OR runtime >= 'Infinity'::float8 THEN NULL  -- NaN too
                WHEN runtime <= 0 THEN -32768
                -- In float8 throughout, as resultlog/dashboard/histogram.py computes it.
                ELSE floor(8 * ln(greatest(runtime, 2::float8 ^ -20)) / ln(2::float8))::smallint
           END;
