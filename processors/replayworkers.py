"""Replay's parallelism: consumers over disjoint shares of the partitions, in this
process or in worker processes (docs/replay.md, "Parallelism and throughput").

A worker is a plain subprocess, ``python -m resultlog.processors.replayworkers``:
forking a running event loop with open sockets is not safe, and multiprocessing's spawn
would re-run the caller's main module. It reports each batch's counts on stdout, one
JSON line per batch.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import astuple
from typing import Any

from resultlog import errors
from resultlog.background import cancel_and_wait
from resultlog.errors import ReplayFailed
from resultlog.gc_policy import settle_after_start
from resultlog.processors.logreader import LogReader, Slice
from resultlog.processors.sink import FoldSink, StagedWriter, SinkStats
from resultlog.settings import Settings
from resultlog.views.history import HistoryStore

OnBatch = Callable[[SinkStats], None]


def split(plan: Slice, ways: int) -> list[Slice]:
    """``plan`` as at most ``ways`` slices over disjoint partitions (round robin by
    partition number; partitions with nothing to read are left out)."""
    parts = sorted(p for p in plan.end if plan.start.get(p, 0) < plan.end[p])
    groups = [parts[i::ways] for i in range(min(ways, len(parts)))]
    return [Slice(plan.topic, {p: plan.start.get(p, 0) for p in g}, {p: plan.end[p] for p in g})
            for g in groups]


async def run_consumers(settings: Settings, group: str, shares: Sequence[Slice], *,
                        redis: bool, history: bool, batch_records: int, on_batch: OnBatch,
                        store: HistoryStore | None = None) -> None:
    """One consumer per share, concurrently, in this process (one history pool:
    ``store``, left open, or one of its own)."""
    owned = store is None
    if store is None:
        store = HistoryStore(settings)
        await store.start()
    sinks = [FoldSink(settings, consumer_group=group, write_redis=redis, write_history=history,
                      history=store) for _ in shares]

    async def run(share: Slice, sink: FoldSink) -> None:
        await sink.start()
        writer = StagedWriter(sink.write, on_batch)
        try:
            async with LogReader(settings) as reader:
                async for batch in reader.read(share, max_records=batch_records):
                    await writer.submit(await sink.prepare_yielding(batch))
            await writer.wait()
        finally:
            await writer.settle()

    tasks = [asyncio.ensure_future(run(share, sink)) for share, sink in zip(shares, sinks)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        # One failed (or we were cancelled): stop the others before closing what they
        # write with; the first error is the one reported.
        await cancel_and_wait(*tasks)
        raise
    finally:
        for sink in sinks:
            sink.history = None  # shared: closed below, or by its owner
            await sink.close()
        if owned:
            await store.close()


async def run_shares(settings: Settings, group: str, shares: Sequence[Slice], *, processes: int,
                     redis: bool, history: bool, batch_records: int, on_batch: OnBatch,
                     store: HistoryStore | None = None) -> None:
    """The shares' consumers spread over ``processes`` processes (this one when 1,
    writing the history through ``store`` if given)."""
    if processes <= 1 or len(shares) <= 1:
        await run_consumers(settings, group, shares, redis=redis, history=history,
                            batch_records=batch_records, on_batch=on_batch, store=store)
        return
    # The child's settings are exactly ours: ours as variables, none inherited.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTLOG_")}
    env.update(settings.to_env())
    procs: list[asyncio.subprocess.Process] = []
    try:
        for i in range(min(processes, len(shares))):
            job = {"group": group, "redis": redis, "history": history, "batch": batch_records,
                   "shares": [{"topic": sh.topic, "start": sh.start, "end": sh.end}
                              for sh in shares[i::processes]]}
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", __name__, json.dumps(job), env=env,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE))
        relays = [asyncio.ensure_future(_relay(i, proc, on_batch)) for i, proc in enumerate(procs)]
        try:
            await asyncio.gather(*relays)
        finally:
            await cancel_and_wait(*relays)  # after a failure: the first error is the one raised
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()  # an error elsewhere, or we were cancelled
                await proc.wait()


async def _relay(i: int, proc: asyncio.subprocess.Process, on_batch: OnBatch) -> None:
    """Relay one worker's batches; raise what it reports, or that it died."""
    assert proc.stdout is not None
    outcome: dict[str, Any] | None = None
    async for line in proc.stdout:
        message = json.loads(line)
        if "batch" in message:
            on_batch(SinkStats(*message["batch"]))
        else:
            outcome = message
    code = await proc.wait()
    if outcome is not None and "error" in outcome:
        kind = getattr(errors, outcome["error"]["type"], None)
        text = outcome["error"]["message"]
        if isinstance(kind, type) and issubclass(kind, errors.ResultlogError):
            raise kind(text)
        raise ReplayFailed(f"replay worker {i} failed: {outcome['error']['type']}: {text}")
    if code != 0 or outcome is None:
        raise ReplayFailed(
            f"replay worker {i} (pid {proc.pid}) exited with status {code} before finishing "
            "its partitions; what it wrote is kept: rerun with --resume")


def _main(argv: list[str]) -> int:
    """A worker process: ``argv[0]`` is the job (JSON); settings come from the environment."""
    job = json.loads(argv[0])
    shares = [Slice(sh["topic"], {int(p): o for p, o in sh["start"].items()},
                    {int(p): o for p, o in sh["end"].items()}) for sh in job["shares"]]
    # stdout is the protocol: keep it to ourselves, and send anything else printed to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr

    def send(message: dict[str, Any]) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    def on_batch(stats: SinkStats) -> None:
        send({"batch": astuple(stats)})

    async def work() -> None:
        # Our stdin is a pipe from the parent that it never writes: end of file means
        # the parent is gone (even killed), and then so is the point of going on.
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_reader(sys.stdin.fileno(), _orphaned, task)
        await run_consumers(Settings.from_env(), job["group"], shares, redis=job["redis"],
                            history=job["history"], batch_records=job["batch"],
                            on_batch=on_batch)

    settle_after_start()  # this process folds in bulk (resultlog/gc_policy.py)
    try:
        asyncio.run(work())
    except asyncio.CancelledError:
        return 1
    except Exception as exc:  # noqa: BLE001 — reported to the parent, which raises it
        send({"error": {"type": type(exc).__name__, "message": str(exc)}})
        return 1
    except KeyboardInterrupt:
        return 130
    send({"done": True})
    return 0


def _orphaned(task: asyncio.Task[None]) -> None:
    if not os.read(sys.stdin.fileno(), 1):
        asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
        task.cancel()


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
