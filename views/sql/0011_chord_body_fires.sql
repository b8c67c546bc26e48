-- 0011: Celery chord bodies' fire marks (resultlog/chords/bodyfires.py; docs/celery.md,
-- "Chords"). One row per chord completion whose body a processor sent, or started to:
-- marked firing (fired false) and committed before the body is sent, fired true once
-- the broker took it. A completion delivered again (its offsets not yet committed by a
-- processor that crashed) finds the row: fired, it is not sent again; still firing (the
-- processor died in between), it is sent again. Until 1 Dec 2026 the mark was a Redis
-- key (`chordfire:<event_id>` under the prefix): a Redis that came back empty had lost it, and
-- the body was sent a second time.
--
-- marked_by: the marking attempt's token (host:pid:random), so that a mark whose commit
-- was acknowledged but whose answer was lost is recognized as its own on retry.
-- expires_at: when the processor deletes the row (the mark + RESULTLOG_RESULT_TTL_S, as
-- the chord's view); NULL: never (a TTL of 0).
CREATE TABLE {schema}.{chord_body_fires_table} (
    event_id   text PRIMARY KEY,
    chord_id   text NOT NULL,
    marked_by  text NOT NULL,
    fired      boolean NOT NULL DEFAULT false,
    marked_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);
CREATE INDEX ON {schema}.{chord_body_fires_table} (expires_at) WHERE expires_at IS NOT NULL;
