"""What one of the history's two analytics triggers costs its write path, measured so
that a busy, shared machine disturbs both sides alike.

    .venv/bin/python -m bench.trigger_write_cost                     # the rollups', batches of 2000
    .venv/bin/python -m bench.trigger_write_cost --events 200000 --batch 500
    .venv/bin/python -m bench.trigger_write_cost --trigger summary --batch 5000

``--trigger rollups`` (the default): the per-minute rollups' (views/sql/0005_rollups.sql);
``--trigger summary``: task_summary's (views/sql/0004_task_summary.sql, its function
replaced by 0006). Two throwaway schemas get the same events (bench/history_write.py's
workload) through ``HistoryStore.write_batch``, batch by batch, alternating which schema
goes first; one has that trigger disabled (both keep the other). Prints each side's
median and total batch time and the difference. Both schemas are dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from bench.history_write import make_events
from resultlog import names
from resultlog.settings import Settings
from resultlog.views.history import HistoryStore
from resultlog.views.migrations import quote_ident

#: What --trigger names: the history's statement-level triggers.
TRIGGERS = {"rollups": names.ROLLUPS_TRIGGER, "summary": names.TASK_SUMMARY_TRIGGER}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--trigger", choices=sorted(TRIGGERS), default="rollups",
                        help="the trigger disabled on one side (default: rollups)")
    args = parser.parse_args()
    if args.events < 1 or args.batch < 1:
        parser.error("--events and --batch must be at least 1")
    trigger = TRIGGERS[args.trigger]
    tag = os.urandom(4).hex()
    with_s, without_s = f"bench_trigcost_on_{tag}", f"bench_trigcost_off_{tag}"
    events = make_events(args.events)
    on = HistoryStore(Settings.from_env(postgres_schema=with_s))
    off = HistoryStore(Settings.from_env(postgres_schema=without_s))
    with_label = f"with {args.trigger}"
    times: dict[str, list[float]] = {with_label: [], "without": []}
    async with on, off:
        try:
            await on.migrate()
            await off.migrate()
            await off.pool.execute(f"ALTER TABLE {quote_ident(without_s)}.{names.HISTORY_TABLE}"
                                   f" DISABLE TRIGGER {trigger}")
            print(f"trigger {trigger} ({args.trigger}) disabled on one side; {args.events:,}"
                  f" events in batches of {args.batch}; load average "
                  f"{os.getloadavg()[0]:.2f} at the start")
            for n, i in enumerate(range(0, len(events), args.batch)):
                chunk = events[i:i + args.batch]
                sides = [(with_label, on), ("without", off)]
                for label, store in sides if n % 2 else sides[::-1]:
                    started = time.perf_counter()
                    await store.write_batch(chunk, {}, consumer_group="bench")
                    times[label].append(time.perf_counter() - started)
            print(f"load average {os.getloadavg()[0]:.2f} at the end")
            for label, ts in times.items():
                print(f"{label:<15} median batch {statistics.median(ts) * 1000:7.1f} ms   "
                      f"total {sum(ts):6.2f} s   {args.events / sum(ts):9,.0f} rows/s")
            a, b = (statistics.median(times[k]) for k in (with_label, "without"))
            print(f"the trigger adds {(a - b) * 1000:.1f} ms a batch ({(a / b - 1) * 100:+.1f}%)")
        finally:
            for s in (with_s, without_s):
                await on.pool.execute(f"DROP SCHEMA IF EXISTS {quote_ident(s)} CASCADE")


if __name__ == "__main__":
    asyncio.run(main())
