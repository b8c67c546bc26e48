"""resultlog next to the result backends it replaces, in one run on the local stack.

    .venv/bin/pip install -e '.[bench]'          # the peers: Celery's, Chicory's backends
    .venv/bin/python -m bench.peers [--tasks 20000] [--writers 4] [--systems a,b,...]

The same workload for every system, one after another, into the same Redis and
PostgreSQL (the local stack, ``resultlog dev up``; each system's keys, tables or topic
isolated and removed at the end): ``--tasks`` tasks written by ``--writers`` processes,
each task STARTED then SUCCESS with a small dict, every write through the system's own
write call, one after another, as fast as it returns. Read back through the system's own
API. Printed per system (a Markdown table):

- **tasks/s until all readable**: tasks / (from the writers' start to the moment a
  checker process, reading the tasks' states through the API in write order from the
  start, has seen every task SUCCESS). It reads the first ``CHECK_MANY`` tasks not yet
  seen SUCCESS at a time, with the system's read of many tasks where it has one
  (``Reader.ready_many``), so that the checker is not what bounds the figure: one
  read per task costs ~0.4 ms here, ~2,600 tasks/s at most, less beside the writers.
  For a system that stores synchronously that is when the writers finish; for resultlog
  it includes the fold into the view.
- **get() p50 / p99**: a client process already waiting in ``get()`` beside writer 0
  (``--waiters N``: one beside each of the first N writers). The client picks a task
  its writer has not written yet (``--sample-every`` tasks past both its previous one
  and the writer's progress), records that it waits for it, and calls ``get()``; when
  the writer reaches that task it writes its SUCCESS once the client has been in
  ``get()`` for ``SETTLE_NS``. The figure is the time from that SUCCESS write call
  *returning* in the writer to ``get()`` returning in the client (CLOCK_MONOTONIC in
  both processes). A writer never waits for its client to come back from ``get()``
  (:class:`Rendezvous`): until 29 Nov 2026 writer 0 did, so a system's get() latency
  bounded its tasks/s, and a system whose other writers were done sooner had its later
  samples taken beside one writer. Polling backends wake at their poll interval
  (Celery's database backend 0.5 s, Chicory 0.1 s: their defaults). One client by
  default: four cost Celery's Redis backend 7-12% of its tasks/s here.
- **get() waits**: how many waits the two percentiles are over. A client waits for one
  task at a time, so a system whose results arrive behind a backlog completes few.
- **keeps**: what the system stores.

The ``celery-resultlog`` row is a Celery app whose ``result_backend`` is
``resultlog://``, written and read through Celery's API exactly as the Celery rows are:
what a Celery user switches to with one setting. With the backend's defaults each
``store_result`` returns only once Kafka acknowledged its event and the writer folded
it into the view. ``--celery-resultlog-options QUERY`` adds the backend's options to its
URL (e.g. ``read_your_writes=false``; the row's label shows them).

``--max-buffered-events N`` sets the resultlog writers' emitter option of that name (its
rows' labels say so). Its emit call returns once the event is buffered, so behind
writers that emit faster than the pipeline acknowledges, a waited-for result queues
behind up to N events of its writer: the bound trades tasks/s for get() latency
(docs/benchmarks.md, "Bounding the emitter's buffer").
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import multiprocessing
import os
import platform
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any
from urllib.parse import parse_qsl, urlencode

from bench._common import isolated, percentiles
from bench.peer_systems import SYSTEMS, CeleryResultlog, Resultlog, System
from resultlog.errors import ConfigurationError

# How long a client has sat in get() before its writer writes the awaited SUCCESS.
SETTLE_NS = 5_000_000
# How many tasks the checker reads at a time, and how long it waits when none of them
# was ready (reading the same unready tasks without a pause would load the store).
CHECK_MANY = 100
CHECK_PAUSE_S = 0.001


def task_id(tag: str, writer: int, i: int) -> str:
    return f"{tag}-{writer}-{i}"


@dataclass(frozen=True)
class Rendezvous:
    """Where a writer and its waiting client meet, in shared memory (``RawValue("q")``:
    each is written by one process only). ``waiting``: the task the client waits for
    (-1: none yet); ``since``: when it began to (perf_counter_ns, set before
    ``waiting``); ``written``: the last task the writer has written.

    The client always waits for a task ahead of its writer, so the writer writes on
    without waiting for ``get()`` to return: a system's get() latency must not bound
    its tasks/s. A task the writer had already passed when the client picked it is no
    sample (its writer did not stamp it): it is counted as dropped."""

    waiting: Any
    since: Any
    written: Any


def writer_main(system: System, writer: int, tasks: int, start: Event,
                meet: Rendezvous | None, out: Connection) -> None:
    client = system.open_writer()
    stamps: dict[int, int] = {}
    settled_ns = 0  # how long this writer waited for its client to settle in get()
    out.send("ready")
    start.wait()
    for i in range(tasks):
        tid = task_id(system.tag, writer, i)
        client.started(tid)
        # The rendezvous, when the client waits for this very task.
        sampled = meet if meet is not None and meet.waiting.value == i else None
        if sampled is not None:
            pause = sampled.since.value + SETTLE_NS - time.perf_counter_ns()
            if pause > 0:
                time.sleep(pause / 1e9)
                settled_ns += pause
        client.success(tid, {"task": i, "writer": writer, "ok": True})
        if sampled is not None:
            stamps[i] = time.perf_counter_ns()
        if meet is not None:
            meet.written.value = i
    client.close()
    out.send((time.perf_counter_ns(), stamps, settled_ns))


def checker_main(system: System, writers: int, tasks: int, start: Event, out: Connection) -> None:
    reader = system.open_reader()
    out.send("ready")
    start.wait()
    order = [task_id(system.tag, w, i) for i in range(tasks) for w in range(writers)]
    unready: list[str] = []  # read, not SUCCESS yet; read again first (write order)
    taken = 0  # order[:taken] have been read at least once
    while unready or taken < len(order):
        head = unready + order[taken:taken + CHECK_MANY - len(unready)]
        taken += len(head) - len(unready)
        ready = reader.ready_many(head)
        unready = [tid for tid in head if tid not in ready]
        if not ready:
            time.sleep(CHECK_PAUSE_S)
    done = time.perf_counter_ns()
    reader.close()
    out.send(done)


def waiter_main(system: System, writer: int, tasks: int, every: int, start: Event,
                meet: Rendezvous, out: Connection) -> None:
    reader = system.open_reader()
    waits: dict[int, int] = {}
    out.send("ready")
    start.wait()
    previous = -every
    while (target := max(previous, meet.written.value) + every) < tasks:
        meet.since.value = time.perf_counter_ns()
        meet.waiting.value = target
        result = reader.get(task_id(system.tag, writer, target))
        waits[target] = time.perf_counter_ns()
        assert result == {"task": target, "writer": writer, "ok": True}, result
        previous = target
    reader.close()
    out.send(waits)


def measure(system: System, tasks: int, writers: int, every: int, waiters: int,
            writer: Callable[..., None] = writer_main) -> dict[str, Any]:
    """The figures of one system. ``writer``: the writer processes' function (the
    signature of :func:`writer_main`; bench.peer_hops times writer 0's hops); what
    writer 0 sends after its stamps is returned as ``"writer0"``, its samples as
    ``"stamps"`` and ``"waits"``."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    meets = [Rendezvous(ctx.RawValue("q", -1), ctx.RawValue("q", 0), ctx.RawValue("q", -1))
             for _ in range(waiters)]
    per_writer = tasks // writers
    pipes, procs = [], []

    def spawn(target: Any, *args: Any) -> None:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=target, args=(system, *args, child), daemon=True)
        proc.start()
        child.close()
        pipes.append(parent)
        procs.append(proc)

    for w in range(writers):
        spawn(writer, w, per_writer, start, meets[w] if w < waiters else None)
    spawn(checker_main, writers, per_writer, start)
    for w, meet in enumerate(meets):
        spawn(waiter_main, w, per_writer, every, start, meet)
    try:
        for pipe in pipes:
            if pipe.recv() != "ready":
                raise RuntimeError("a bench process did not start")
        began = time.perf_counter_ns()
        start.set()
        results = [pipe.recv() for pipe in pipes]
    finally:
        for proc in procs:
            proc.join(TIMEOUT_JOIN_S)
            if proc.is_alive():
                proc.kill()
    writer_results, all_readable = results[:writers], results[writers]
    # Per sampled writer: the client's waits that its writer stamped (see Rendezvous).
    samples = [{i: (stamps[i], done) for i, done in waits.items() if i in stamps}
               for (_, stamps, *_), waits in zip(writer_results, results[writers + 1:])]
    latencies = [(done - returned) / 1e6 for pairs in samples for returned, done in pairs.values()]
    p50, p99 = percentiles(latencies, 50, 99)
    return {
        "tasks_per_s": per_writer * writers / ((all_readable - began) / 1e9),
        "writers_done_s": (max(r[0] for r in writer_results) - began) / 1e9,
        "readable_s": (all_readable - began) / 1e9,
        "settled_s": sum(r[2] for r in writer_results) / 1e9,
        "p50": p50, "p99": p99, "samples": len(latencies),
        "dropped": sum(len(waits) for waits in results[writers + 1:]) - len(latencies),
        "stamps": {i: returned for i, (returned, _) in samples[0].items()},
        "waits": {i: done for i, (_, done) in samples[0].items()},
        "writer0": writer_results[0][3:],
    }


TIMEOUT_JOIN_S = 60


def installed_version(package: str) -> str:
    """The package's version for the table's labels ("not installed" for a peer left out)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def celery_backend_options(query: str) -> dict[str, str]:
    """``query`` (``name=value&...``) as options of the resultlog Celery backend's URL,
    checked here as the backend will check them, so that a wrong one stops the bench
    before anything runs rather than in a writer process."""
    if not query:
        return {}
    # Imported only here: the package imports Celery, which only some rows need.
    from resultlog.celery_backend.config import BackendConfig
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True))
    BackendConfig.load("resultlog://?" + urlencode(options), env={})
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--waiters", type=int, default=1,
                        help="waiting clients, one beside each of the first N writers")
    parser.add_argument("--sample-every", type=int, default=50,
                        help="a client waits for a task at least N tasks past its previous "
                             "one and past its writer's progress")
    parser.add_argument("--max-buffered-events", type=int, default=None,
                        help="the resultlog writers' emitter option max_buffered_events "
                             "(default: the emitter's own)")
    parser.add_argument("--celery-resultlog-options", default="", metavar="QUERY",
                        help="more options for the celery-resultlog row's resultlog:// URL, "
                             "as its query, e.g. read_your_writes=false (default: none)")
    args = parser.parse_args()
    try:
        celery_resultlog_options = celery_backend_options(args.celery_resultlog_options)
    except ModuleNotFoundError as exc:
        parser.error(f"--celery-resultlog-options needs Celery ({exc}): "
                     ".venv/bin/pip install -e '.[bench]'")
    except (ValueError, ConfigurationError) as exc:
        parser.error(f"--celery-resultlog-options: {exc}")
    if args.max_buffered_events is not None and args.max_buffered_events < 1:
        parser.error("--max-buffered-events must be at least 1")
    if args.writers < 1 or args.tasks < args.writers:
        parser.error("--writers must be at least 1 and --tasks at least --writers")
    if not 1 <= args.waiters <= args.writers:
        parser.error(f"--waiters must be 1..{args.writers} (one client beside each writer)")
    if args.sample_every < 1:
        parser.error("--sample-every must be at least 1")
    names = args.systems.split(",")
    unknown = set(names) - SYSTEMS.keys()
    if unknown:
        parser.error(f"unknown system(s) {', '.join(sorted(unknown))}; known: {', '.join(SYSTEMS)}")
    if celery_resultlog_options and "celery-resultlog" not in names:
        parser.error("--celery-resultlog-options is for the celery-resultlog row, which "
                     "--systems leaves out")
    # Checked before anything runs: a missing peer otherwise fails inside a writer
    # process, after the systems before it have run.
    missing = {name: [m for m in SYSTEMS[name][0].needs if importlib.util.find_spec(m) is None]
               for name in names}
    if any(missing.values()):
        parser.error("not installed: " + "; ".join(
            f"{name} needs {', '.join(mods)}" for name, mods in missing.items() if mods)
            + ". The peers are the bench extra: .venv/bin/pip install -e '.[bench]'"
            + " (or leave them out: --systems resultlog,resultlog-ryw)")
    versions = {p: installed_version(p) for p in ("celery", "chicory")}
    print(f"{args.tasks:,} tasks (STARTED, then SUCCESS with a small dict) from {args.writers} "
          f"writer processes, {args.waiters} waiting client(s); {os.cpu_count()} CPUs, "
          f"{platform.python_implementation()} {platform.python_version()}; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows = []
    for name in names:
        cls, label, keeps = SYSTEMS[name]
        tag = f"peers{uuid.uuid4().hex[:8]}"
        system = cls(label.format(**versions), keeps, tag, isolated("peers"))
        if (isinstance(system, Resultlog) and system.buffers
                and args.max_buffered_events is not None):
            system.max_buffered_events = args.max_buffered_events
            system.name += f", max_buffered_events={args.max_buffered_events:,}"
        if isinstance(system, CeleryResultlog) and celery_resultlog_options:
            system.options = celery_resultlog_options
            system.name = system.name.replace(
                "resultlog://", f"resultlog://?{args.celery_resultlog_options}")
        system.setup()
        try:
            r = measure(system, args.tasks, args.writers, args.sample_every, args.waiters)
        finally:
            system.teardown()
        print(f"  {system.name}: {r['tasks_per_s']:,.0f} tasks/s (writers done after "
              f"{r['writers_done_s']:.2f} s, all readable after {r['readable_s']:.2f} s), get() "
              f"p50 {r['p50']:.2f} ms p99 {r['p99']:.2f} ms over {r['samples']} waits "
              f"({r['dropped']} dropped; the writers waited {r['settled_s']:.2f} s for "
              f"their clients to settle in get()); load "
              f"average {os.getloadavg()[0]:.2f}", flush=True)
        rows.append((system, r))
    print()
    # The waits beside the percentiles: a system whose get() waits behind a backlog
    # completes few of them in a run, and a p99 over few waits is about their largest.
    print("| system | tasks/s until all readable | get() p50 | get() p99 | get() waits | keeps |")
    print("|---|---|---|---|---|---|")
    for system, r in rows:
        print(f"| {system.name} | {r['tasks_per_s']:,.0f} | {r['p50']:.2f} ms | {r['p99']:.2f} ms "
              f"| {r['samples']} | {system.keeps} |")


if __name__ == "__main__":
    main()
