"""Every Kafka topic name, Redis key and Postgres object name in one place.

Reading this module tells the whole storage layout. Names that tests or deployments
need to vary (topics, the key prefix, the schema) come from settings; this module
builds every concrete name from those, so no other module formats a key or topic.
"""

from __future__ import annotations

# Kafka: defaults (overridable by settings).
DEFAULT_EVENTS_TOPIC = "resultlog.events"
DEFAULT_CONSUMER_GROUP = "resultlog-processor"

# The event meta entry that lists the fields the emitter cut to fit an outcome within
# RESULTLOG_MAX_EVENT_BYTES, as "field:original_bytes" pairs (producers/fitting.py).
TRUNCATED_META_KEY = "resultlog.truncated"

# The Celery result backend (resultlog/celery_backend/): its result_backend URL scheme,
# and the key of the object a STARTED event's result holds when it records a Celery
# state the event contract has no name for (update_state(state="PROGRESS", meta=...)):
# {"resultlog.celery_state": "PROGRESS", "meta": <the meta, JSON>}.
CELERY_BACKEND_SCHEME = "resultlog"
CELERY_STATE_KEY = "resultlog.celery_state"
CELERY_META_KEY = "meta"
# A Celery GroupResult.save() is a SUCCESS event of the group's id under this task name,
# its result the group's member tuple; delete() is a REVOKED event of it.
CELERY_SAVED_GROUP_TASK = "celery.group.saved"
# Event meta keys (the view keeps an event's meta map): the queue a Celery task came
# from, and the tasks it sent (Celery's result tuples, JSON), as Celery's meta has them.
CELERY_QUEUE_META = "celery.queue"
CELERY_CHILDREN_META = "celery.children"
# The args of an exception whose class Celery calls with more than its message (JSON:
# {"type", "message", "args"}: which exception they belong to, and its args).
CELERY_EXC_ARGS_META = "celery.exc_args"

# Redis: defaults and the layout below the prefix.
DEFAULT_REDIS_PREFIX = "resultlog:"
# {prefix}task:{task_id}       hash: the latest state of one task (see views/fold.lua)
# {prefix}done:{task_id}       pub/sub channel: a task reached a ready state
# {prefix}transitions          pub/sub channel: every fold call that moves tasks' winners
#                              publishes them there (one JSON message per call), if anyone
#                              is subscribed to it (the dashboard's live page; fold.lua)
# {prefix}offsets:{group}     hash: "topic:partition" -> next offset folded into the view,
#                              and "gap:topic:partition" -> "start:end", events of that
#                              range the view lacks and the processor is rebuilding,
#                              and "chords:lost" -> a token while the chord views, lost
#                              with the whole record, are not rebuilt yet
#                              (views/coverage.py)
# {prefix}chord:{chord_id}     hash: a chord's progress
# {prefix}chorddone:{chord_id} pub/sub channel: a chord completed or failed
# {prefix}chordfire:{completion_event_id}  string: a Celery chord's body firing, until
#                              1 Dec 2026 (now CHORD_BODY_FIRES_TABLE); still cleared
#                              with the view, for keys an older processor left

# Postgres: default schema; tables live inside it.
DEFAULT_PG_SCHEMA = "resultlog"
HISTORY_TABLE = "task_events"
OFFSETS_TABLE = "consumer_offsets"
# Which views/sql/NNNN_*.sql migrations a schema has had (views/migrations.py).
MIGRATIONS_TABLE = "schema_migrations"
# Session-local TEMP table each history batch is COPYed into before one INSERT ... SELECT.
# The suffix versions its column layout: a long-lived connection never reuses an old one.
HISTORY_STAGE_TABLE = "resultlog_history_stage_v1"
# Analytics over the history (views/sql/0002_analytics.sql spells these out, because
# migrations only know 0001's placeholders; tests/integration/test_analytics.py checks).
ATTEMPTS_VIEW = "attempts"  # one row per (task, attempt)
TASKS_VIEW = "tasks"  # one row per task: the fold's winner and totals
TASK_STATS_FUNCTION = "task_stats"  # per task name and time bucket
# One row per task (the fold's winner), kept by a trigger on the history
# (views/sql/0004_task_summary.sql); what the dashboard's task list pages over.
TASK_SUMMARY_TABLE = "task_summary"
# Its trigger (0004 spells it "{summary_table}_fold": a migration's text never changes).
TASK_SUMMARY_TRIGGER = f"{TASK_SUMMARY_TABLE}_fold"
# Per-minute rollups of the history, kept by a trigger on it (views/sql/0005_rollups.sql);
# what the dashboard's overview reads: event counts per (minute, task name, state), and
# runtime histograms per (minute or hour, task name). The function recomputes whole
# hours of both from the history (the migration's backfill, `resultlog prune`).
TASK_MINUTES_TABLE = "task_minutes"
TASK_RUNTIMES_TABLE = "task_runtimes"
REBUILD_ROLLUPS_FUNCTION = "rebuild_rollups"
# Its trigger: named to sort after the summary's (TASK_SUMMARY_TRIGGER), because triggers
# on one event fire in name order and the rollups read names the summary has just folded.
ROLLUPS_TRIGGER = f"{TASK_SUMMARY_TABLE}_then_rollups"
# Purpose of the advisory lock that serializes `resultlog prune` runs on one schema.
PRUNE_LOCK = "prune"
# One row per chord completion whose hooks a processor ran: the claim taken before they
# run (views/sql/0010_chord_hook_claims.sql, resultlog/chords/hookclaims.py). In Redis
# (`{prefix}chordhook:<event_id>`) until 1 Dec 2026: a Redis that lost its data lost
# them, and a completion delivered again ran its hooks again.
CHORD_HOOK_CLAIMS_TABLE = "chord_hook_claims"
# One row per Celery chord completion whose body a processor sent or began to send: the
# mark taken before it is sent, and set fired after (views/sql/0011_chord_body_fires.sql,
# resultlog/chords/bodyfires.py). In Redis (`{prefix}chordfire:<event_id>`) until 1 Dec
# 2026: a Redis that lost its data lost them, and a completion delivered again sent its
# body again.
CHORD_BODY_FIRES_TABLE = "chord_body_fires"


def dead_letter_topic(events_topic: str) -> str:
    return events_topic + ".deadletter"


def chords_topic(events_topic: str) -> str:
    return events_topic + ".chords"


def chord_completions_topic(events_topic: str) -> str:
    return events_topic + ".chord-completions"


def task_key(prefix: str, task_id: str) -> str:
    return f"{prefix}task:{task_id}"


def task_done_channel(prefix: str, task_id: str) -> str:
    return f"{prefix}done:{task_id}"


def transitions_channel(prefix: str) -> str:
    return f"{prefix}transitions"


def task_key_pattern(prefix: str) -> str:
    """A SCAN MATCH pattern for every task hash under ``prefix`` (glob characters escaped)."""
    return prefix_pattern(f"{prefix}task:")


# The key families a rebuild of the view clears (above): every resultlog key under the
# prefix. (The chords' marks, side effects that happened, are in PostgreSQL: a rebuilt
# or lost view must not make them happen again. CHORD_HOOK_CLAIMS_TABLE,
# CHORD_BODY_FIRES_TABLE.)
_VIEW_KEY_FAMILIES = ("task:", "offsets:", "viewbatch:", "chord:", "chordfire:", "worker:")


def prefix_pattern(prefix: str) -> str:
    """A SCAN MATCH pattern for every key under ``prefix`` (glob characters escaped)."""
    return _glob_escape(prefix) + "*"


def is_view_key(prefix: str, key: str) -> bool:
    """Whether ``key`` is one of the view's keys under ``prefix`` (a rebuild clears it):
    one of resultlog's key families, so that another application's key that merely
    starts with the prefix (``app1``, ``app10:...``) never is."""
    if not key.startswith(prefix):
        return False
    rest = key[len(prefix):]
    return rest.startswith(_VIEW_KEY_FAMILIES) or key == workers_index_key(prefix)


def task_id_from_key(prefix: str, key: str) -> str:
    """The task id a :func:`task_key` was built from."""
    head = f"{prefix}task:"
    if not key.startswith(head):
        raise ValueError(f"{key!r} is not a task key under prefix {prefix!r}")
    return key[len(head):]


def _glob_escape(text: str) -> str:
    # Redis MATCH patterns treat * ? [ ] and backslash specially; a prefix is literal.
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def offsets_key(prefix: str, consumer_group: str) -> str:
    """Hash: "topic:partition" -> next offset, written atomically with the view."""
    return f"{prefix}offsets:{consumer_group}"


def view_batch_marker_key(prefix: str, consumer_group: str, batch_id: str) -> str:
    """String: how many calls of a batch written in parts, or of a rebuild, the view holds
    (fold.lua; ``batch_id`` is unique to the batch or the rebuild)."""
    return f"{prefix}viewbatch:{consumer_group}:{batch_id}"


def position_field(topic: str, partition: int) -> str:
    """The offsets hash's field for one partition's position."""
    return f"{topic}:{partition}"


GAP_FIELD_PREFIX = "gap:"


def chord_key(prefix: str, chord_id: str) -> str:
    return f"{prefix}chord:{chord_id}"


def chord_key_pattern(prefix: str) -> str:
    """A SCAN MATCH pattern for every chord hash under ``prefix`` (glob characters escaped)."""
    return prefix_pattern(f"{prefix}chord:")


def chord_id_from_key(prefix: str, key: str) -> str:
    """The chord id a :func:`chord_key` was built from."""
    head = f"{prefix}chord:"
    if not key.startswith(head):
        raise ValueError(f"{key!r} is not a chord key under prefix {prefix!r}")
    return key[len(head):]


def chord_done_channel(prefix: str, chord_id: str) -> str:
    return f"{prefix}chorddone:{chord_id}"


def faust_group(consumer_group: str) -> str:
    """The faust app's group (why one of its own: processors/app.py)."""
    return consumer_group + ".faust"


def faust_data_dir(dev_dir: str, consumer_group: str) -> str:
    """The faust app's data directory. Its tables are in memory, so it holds only
    faust's empty layout; a test or benchmark removes its own with its other state."""
    return f"{dev_dir}/faust/{consumer_group}"


# The chord aggregator's consumer group (a plain aiokafka consumer of the chords topic)
# and its state's changelog topic, both named from the processor's consumer group.
def chord_group(consumer_group: str) -> str:
    return consumer_group + ".chords"


def chord_state_changelog_topic(consumer_group: str) -> str:
    return consumer_group + ".chord-state-changelog"


def history_partition(yyyymmdd: str) -> str:
    """The history table's partition holding one UTC day, e.g. ``task_events_20240131``."""
    return f"{HISTORY_TABLE}_{yyyymmdd}"


def pg_advisory_lock(schema: str, purpose: str) -> str:
    """Text hashed into the advisory lock key that serializes ``purpose`` within ``schema``."""
    return f"resultlog:{schema}:{purpose}"


# Worker heartbeats (schemas/workers.py, views/workers.py).
# {prefix}worker:{worker_id}  hash: the worker's latest heartbeat; expires with it
# {prefix}workers             sorted set: worker id -> expiry (ms), the live workers' index
WORKER_HEARTBEATS_TABLE = "worker_heartbeats"  # every heartbeat (views/sql/0003_workers.sql)
WORKER_SESSIONS_VIEW = "worker_sessions"  # one row per worker id: uptime, throughput


def worker_key(prefix: str, worker_id: str) -> str:
    return f"{prefix}worker:{worker_id}"


def workers_index_key(prefix: str) -> str:
    return f"{prefix}workers"


# The Chicory backend (resultlog/chicory_backend/): a task event's result that carries a
# Chicory state the event contract has no name for (PENDING, DEAD_LETTERED), or a result
# on a state other than SUCCESS: {"resultlog.chicory_state": "DEAD_LETTERED", "result": ...}.
CHICORY_STATE_KEY = "resultlog.chicory_state"
CHICORY_RESULT_KEY = "result"
# Heartbeat meta entries: a Chicory worker's connection statuses, as JSON.
CHICORY_BROKER_META = "chicory.broker"
CHICORY_BACKEND_META = "chicory.backend"
