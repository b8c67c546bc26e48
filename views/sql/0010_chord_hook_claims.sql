-- 0010: the chord hooks' claims (resultlog/chords/hookclaims.py; docs/chords.md, "Once").
-- One row per chord completion whose hooks a processor ran, or started to: inserted and
-- committed before they run, so a completion delivered again (its offsets not yet
-- committed by a processor that crashed, or published again by the aggregator) finds
-- it and is skipped. Until 1 Dec 2026 the claim was a Redis key: a Redis that came back
-- empty had lost it, and the hooks ran a second time.
--
-- claimed_by: the claiming attempt's token (host:pid:random), so that a claim whose
-- commit was acknowledged but whose answer was lost is recognized as its own on retry.
-- expires_at: when the processor deletes the row (the claim + RESULTLOG_RESULT_TTL_S,
-- as the Redis key expired); NULL: never (a TTL of 0).
CREATE TABLE {schema}.{chord_hook_claims_table} (
    event_id   text PRIMARY KEY,
    chord_id   text NOT NULL,
    claimed_by text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);
CREATE INDEX ON {schema}.{chord_hook_claims_table} (expires_at) WHERE expires_at IS NOT NULL;
