"""``resultlog demo``: the whole pipeline on the local stack, in under a minute.

Starts a processor, runs a small workload on a few worker threads (successes, a
failure, a retried task, a revoked one) through the sync emitter, then shows what a
user came for: each task's result read back through ``AsyncResult`` (woken by push),
and every transition from the Postgres history.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from resultlog.errors import ResultlogError
from resultlog.producers import SyncEmitter
from resultlog.settings import Settings
from resultlog.views import ResultBackend


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="run a sample workload through the whole pipeline and show the results",
    )
    p.add_argument("--tasks", type=int, default=12, help="number of add() tasks (default 12)")
    p.add_argument("--no-processor", action="store_true",
                   help="do not start a processor (one is already running)")
    p.set_defaults(func=_run)


class FlakyError(ConnectionError):
    """Raised by the demo's flaky task on its first attempt."""


def _workload(emitter: SyncEmitter, run: str, n: int) -> list[str]:
    """Emit the demo's tasks from a pool of worker threads; returns their ids."""

    def add(i: int) -> None:
        task_id = f"{run}-add-{i}"
        emitter.received(task_id, task_name="demo.add", args=[i, i * 10])
        with emitter.track(task_id, task_name="demo.add", args=[i, i * 10]) as tracker:
            time.sleep(random.uniform(0.001, 0.02))
            tracker.result = i + i * 10

    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="worker") as pool:
        list(pool.map(add, range(n)))

    div = f"{run}-divide"
    emitter.received(div, task_name="demo.divide", args=[1, 0])
    try:
        with emitter.track(div, task_name="demo.divide", args=[1, 0]):
            1 / 0
    except ZeroDivisionError:
        pass

    flaky = f"{run}-flaky"
    emitter.received(flaky, task_name="demo.flaky")
    emitter.started(flaky, task_name="demo.flaky")
    emitter.retry(flaky, FlakyError("upstream timed out"), attempt=0)
    with emitter.track(flaky, attempt=1, task_name="demo.flaky") as tracker:
        tracker.result = {"fetched": 3}

    revoked = f"{run}-revoked"
    emitter.received(revoked, task_name="demo.slow")
    emitter.revoked(revoked, task_name="demo.slow")
    emitter.flush()
    return [*(f"{run}-add-{i}" for i in range(n)), div, flaky, revoked]


def _show(backend: ResultBackend, tasks: list[str]) -> None:
    print(f"\n{'task':<34} {'state':<8} {'retries':>7}  result / exception")
    for task_id in tasks:
        result = backend.AsyncResult(task_id)
        try:
            value: Any = result.get(timeout=60, propagate=False)
        except ResultlogError as exc:
            value = f"<{exc}>"
        shown = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else repr(value)
        print(f"{task_id:<34} {result.state:<8} {result.retries or 0:>7}  {shown}")


def _show_history(backend: ResultBackend, task_id: str) -> None:
    events = backend.AsyncResult(task_id).history()
    print(f"\nhistory of {task_id} (from Postgres):")
    start = events[0].timestamp if events else 0
    for e in events:
        extra = f" {e.exception.type}: {e.exception.message}" if e.exception else ""
        extra += f" result={e.result}" if e.result is not None else ""
        print(f"  +{e.timestamp - start:>5} ms  attempt {e.attempt}  {e.state.value:<8} {e.worker or ''}{extra}")


def _run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    run = f"demo-{uuid.uuid4().hex[:6]}"
    proc = None
    if not args.no_processor:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log_path = os.path.join(settings.dev_dir, "demo-processor.log")
        os.makedirs(settings.dev_dir, exist_ok=True)
        print(f"starting a processor (log: {log_path})")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "resultlog", "process", "--loglevel", "warning"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        with SyncEmitter(settings, worker="demo-worker") as emitter:
            tasks = _workload(emitter, run, args.tasks)
        print(f"emitted the events of {len(tasks)} tasks in {time.monotonic() - started:.2f}s")
        with ResultBackend(settings) as backend:
            _show(backend, tasks)
            _show_history(backend, f"{run}-flaky")
            _show_history(backend, f"{run}-divide")
        print(f"\ndone in {time.monotonic() - started:.1f}s. Try: resultlog verify")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    return 0
