"""``resultlog process``: run the fold processor (a faust worker) in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

from resultlog.errors import ValidationError
from resultlog.gc_policy import settle_after_start
from resultlog.settings import Settings


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "process",
        help="run the processor that folds the events topic into Redis and Postgres",
        description="Run the fold processor: a faust-streaming worker in the consumer "
        "group RESULTLOG_CONSUMER_GROUP. Start more processes to scale out; stop with Ctrl-C.",
    )
    p.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--celery-app", metavar="MODULE:APP", default=None,
                   help="the Celery app whose chords' bodies this processor fires (as celery -A "
                        "takes it, e.g. proj.celery:app); needed where a Celery app uses "
                        "result_backend = 'resultlog://' and chords (docs/celery.md)")
    p.set_defaults(func=_run)
    register_replay(subparsers)


def _run(args: argparse.Namespace) -> int:
    run(Settings.from_env(), loglevel=args.loglevel, celery_app=args.celery_app)
    return 0


def run(settings: Settings, *, loglevel: str = "info", celery_app: str | None = None) -> None:
    import faust

    from resultlog.processors.app import Processor
    from resultlog.chords.fire import BodyFirer, load_celery_app
    from resultlog.producers.topics import ensure_topics

    # Loaded first: a wrong name fails at once, not at the first chord.
    app = None if celery_app is None else load_celery_app(celery_app)
    # faust's worker runs its own loop; create the topics on that same loop first.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(
        # The chords topic gets settings.topic_partitions, as the events topic and the
        # chord aggregator's changelog do: faust requires source and changelog to match.
        ensure_topics(settings, settings.events_topic, settings.dead_letter_topic,
                      settings.chords_topic, settings.chord_completions_topic)
    )
    processor = Processor(settings, firer=None if app is None else BodyFirer(settings, app))
    logging.getLogger("resultlog").setLevel(loglevel.upper())
    worker = faust.Worker(processor.app, loglevel=loglevel, loop=loop, quiet=True)
    # At --loglevel warning or error, faust's start-up spinner sets the root logger to
    # DEBUG (to spin on every record) and leaves it there: every debug call of aiokafka
    # then builds a record that no handler prints, a cost on each fetch and batch.
    worker.spinner = None
    # The modules and the app are built by now: keep them out of the collector's full
    # collections, and collect the young less often (resultlog/gc_policy.py says why).
    settle_after_start()
    worker.execute_from_commandline()


class _Deprecated(argparse.Action):
    """An old spelling of an option: stored as the new one, with a warning."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        new = "--" + self.dest.replace("_", "-")
        print(f"resultlog: {option_string} is deprecated, use {new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def register_replay(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "replay",
        help="rebuild the Redis view and/or the Postgres history from the events topic",
        description="Re-read the events topic and fold it into the stores. Writes are "
        "idempotent: an interrupted replay can be rerun or resumed (--resume).",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--redis-only", action="store_true", help="rebuild only the Redis view")
    which.add_argument("--history-only", action="store_true", help="rebuild only the Postgres history")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-timestamp", metavar="WHEN",
                       help="start at this time: ISO 8601 (2026-11-22T10:00:00Z) or ms since the epoch")
    start.add_argument("--from-offsets", metavar="P:O[,P:O...]",
                       help="start partition P at offset O (others from the beginning)")
    start.add_argument("--resume", action="store_true", help="continue an interrupted replay")
    p.add_argument("--fresh", action="store_true",
                   help="empty the chosen stores first (Redis keys under the prefix; the history table)")
    p.add_argument("--force", action="store_true",
                   help="run even while live processors are in the consumer group")
    p.add_argument("--batch", type=int, default=5000, help="records per write batch (default 5000)")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes, each over its own share of the partitions "
                        "(default: one per CPU)")
    p.add_argument("--consumers", type=int, default=2,
                   help="concurrent consumers per process, each over its own share (default 2)")
    p.add_argument("--pipelines", type=int, dest="consumers", action=_Deprecated,
                   help=argparse.SUPPRESS)
    p.set_defaults(func=_replay)

    v: argparse.ArgumentParser = subparsers.add_parser(
        "verify",
        help="compare both views with a fold of the log; exit 1 on any difference",
    )
    v.add_argument("--source", choices=["log", "history"], default="log",
                   help="what the expected state is folded from (default: the log)")
    only = v.add_mutually_exclusive_group()
    only.add_argument("--redis-only", action="store_true", help="check only the Redis view")
    only.add_argument("--history-only", action="store_true", help="check only the Postgres history")
    v.add_argument("--max-report", type=int, default=50,
                   help="differences to print (default 50; 0 prints only their count)")
    v.set_defaults(func=_verify)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _is_number(text: str) -> bool:
    # str.isdigit() alone takes "²", which int() then refuses with a bare ValueError.
    return text.isascii() and text.isdigit()


def parse_timestamp(text: str) -> int:
    """ms since the epoch from ISO 8601 or a number, within what Kafka and a datetime
    can hold; a clear error otherwise."""
    # Imported here, as the commands below import what they run: aiokafka and the stores
    # stay out of every other command's start-up.
    from resultlog.processors.logreader import check_timestamp_ms

    what = f"--from-timestamp {text!r}"
    if _is_number(text):
        return check_timestamp_ms(int(text), what)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            f"{what}: expected ISO 8601 such as 2026-11-22T10:00:00Z "
            "or milliseconds since the epoch"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    # Whole milliseconds by timedelta arithmetic: exact, where a float timestamp can
    # land one millisecond short.
    return check_timestamp_ms((when - _EPOCH) // timedelta(milliseconds=1), what)


def parse_offsets(text: str) -> dict[int, int]:
    """PARTITION:OFFSET[,...] as a dict; each partition at most once."""
    out: dict[int, int] = {}
    for part in text.split(","):
        p, sep, o = part.strip().partition(":")
        if not sep or not _is_number(p) or not _is_number(o):
            raise ValidationError(f"--from-offsets {text!r}: expected PARTITION:OFFSET[,...], e.g. 0:100,3:0")
        if int(p) in out:
            raise ValidationError(f"--from-offsets {text!r}: partition {int(p)} is given twice; "
                                  "give each partition one offset")
        out[int(p)] = int(o)
    return out


def _replay(args: argparse.Namespace) -> int:
    from resultlog.processors.replay import replay

    settings = Settings.from_env()
    # This process folds itself with --jobs 1 or a single share (else its workers do, and
    # settle their own): resultlog/gc_policy.py.
    settle_after_start()
    summary = asyncio.run(replay(
        settings,
        redis=not args.history_only,
        history=not args.redis_only,
        # "is not None": an empty value is refused by the parser, not taken as absent.
        from_timestamp_ms=None if args.from_timestamp is None else parse_timestamp(args.from_timestamp),
        from_offsets=None if args.from_offsets is None else parse_offsets(args.from_offsets),
        resume=args.resume,
        fresh=args.fresh,
        force=args.force,
        batch_records=args.batch,
        jobs=args.jobs,
        consumers=args.consumers,
    ))
    print(summary.render())
    return 0


def _verify(args: argparse.Namespace) -> int:
    from resultlog.processors.verify import verify

    # Checked before reading the log: a negative count would slice from the end.
    if args.max_report < 0:
        raise ValidationError(f"--max-report must be 0 or more, not {args.max_report} "
                              "(0 prints only the count of differences)")
    settings = Settings.from_env()
    report = asyncio.run(verify(settings, redis=not args.history_only,
                                history=not args.redis_only, source=args.source, progress=True))
    for diff in report.differences[: args.max_report]:
        print(diff.render())
    if args.max_report and len(report.differences) > args.max_report:
        print(f"... and {len(report.differences) - args.max_report} more")
    verdict = "OK: the views equal the fold" if report.ok else f"{len(report.differences)} difference(s)"
    chords = f" and {report.chords:,} chords" if report.chords else ""
    print(f"verified {report.tasks:,} tasks{chords} from {report.events:,} events "
          f"({report.undecodable} undecodable): {verdict}")
    return 0 if report.ok else 1
