"""Where a waiting client's time goes in bench.peers' resultlog rows, hop by hop.

    .venv/bin/python -m bench.peer_hops [--systems resultlog,resultlog-ryw] [--tasks 20000]

The workload and the get() figure are bench.peers' (same writers, checker and waiting
client). Writer 0 also timestamps, for each task the client waits for, where that
task's SUCCESS was at each step in the writer process (CLOCK_MONOTONIC, as the get()
figure), through public calls only:

- **in the emitter**: from the write call returning until the emitter hands the batch
  holding the event to aiokafka (``send_batch``): the wait for the partition's previous
  batch to be acknowledged, and for the emitter's loop thread to run;
- **Kafka ack**: from there until Kafka acknowledged that batch;
- with read-your-writes, **to the fold call**: from the acknowledgement until the
  emitter's fold call for the event (``RedisView.apply``) begins, and **fold call**: that
  call's round trip to Redis (the waiting client is woken by its publish, inside it);
- **after the ack** (without read-your-writes): from the acknowledgement until get()
  returned: the processor's fetch, both store writes and the push.

The batch holding the event is taken to be the first batch of its partition handed to
aiokafka after the write call returned (true unless an older full batch of the same
partition was still waiting then: the figures say how many samples matched).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

from bench._common import isolated, percentiles
from bench.peer_systems import SYSTEMS, System
from bench.peers import Rendezvous, installed_version, measure, task_id, writer_main

RESULTLOG_SYSTEMS = ("resultlog", "resultlog-ryw")

# Filled in writer 0 by the hooks (event loop thread): (handed over, acknowledged,
# partition) per batch, and (began, returned, tasks folded as SUCCESS) per fold call.
_BATCHES: list[tuple[int, int | None, int]] = []
_FOLDS: list[tuple[int, int, frozenset[str]]] = []


def _install_hooks() -> None:
    from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

    from resultlog.views.redis_view import RedisView

    send_batch = AIOKafkaProducer.send_batch
    apply = RedisView.apply

    async def timed_send_batch(self: Any, builder: Any, topic: str, *, partition: int) -> Any:
        delivered = await send_batch(self, builder, topic, partition=partition)
        row = len(_BATCHES)
        _BATCHES.append((time.perf_counter_ns(), None, partition))

        def acked(_: asyncio.Future[Any]) -> None:
            handed, _ack, part = _BATCHES[row]
            _BATCHES[row] = (handed, time.perf_counter_ns(), part)
        delivered.add_done_callback(acked)
        return delivered

    async def timed_apply(self: Any, events: Sequence[Any], *args: Any, **kwargs: Any) -> int:
        began = time.perf_counter_ns()
        changed = await apply(self, events, *args, **kwargs)
        _FOLDS.append((began, time.perf_counter_ns(),
                       frozenset(e.task_id for e in events if e.state.value == "SUCCESS")))
        return int(changed)

    AIOKafkaProducer.send_batch = timed_send_batch
    RedisView.apply = timed_apply  # type: ignore[method-assign]


class _WithHops:
    """Writer 0's pipe end: adds the hops to what writer_main sends last."""

    def __init__(self, out: Connection, tag: str, partitions: int) -> None:
        self.out, self.tag, self.partitions = out, tag, partitions

    def send(self, obj: Any) -> None:
        if isinstance(obj, tuple):
            obj = (*obj, self._hops(obj[1]))
        self.out.send(obj)

    def close(self) -> None:
        self.out.close()

    def _hops(self, stamps: dict[int, int]) -> dict[int, tuple[int | None, int | None, int | None, int | None]]:
        from resultlog.producers.partitioner import partition_for
        hops = {}
        for i, returned in stamps.items():
            tid = task_id(self.tag, 0, i)
            partition = partition_for(tid.encode(), self.partitions)
            batch = next((b for b in _BATCHES if b[2] == partition and b[0] >= returned), None)
            fold = next((f for f in _FOLDS if tid in f[2]), None)
            hops[i] = (None if batch is None else batch[0], None if batch is None else batch[1],
                       None if fold is None else fold[0], None if fold is None else fold[1])
        return hops


def hops_writer(system: System, writer: int, tasks: int, start: Event, meet: Rendezvous | None,
                out: Connection) -> None:
    if writer == 0:
        _install_hooks()
        out = _WithHops(out, system.tag, system.settings.topic_partitions)  # type: ignore[assignment]
    writer_main(system, writer, tasks, start, meet, out)


def _quantiles(values: list[float]) -> str:
    if len(values) < 2:
        return "-"
    p50, p90 = percentiles(values, 50, 90)
    return f"{p50:.2f} / {p90:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--systems", default=",".join(RESULTLOG_SYSTEMS))
    parser.add_argument("--sample-every", type=int, default=50)
    args = parser.parse_args()
    names = args.systems.split(",")
    if not set(names) <= set(RESULTLOG_SYSTEMS):
        parser.error(f"--systems: hops are timed for {', '.join(RESULTLOG_SYSTEMS)} only")
    versions = {p: installed_version(p) for p in ("celery", "chicory")}
    print("| system | tasks/s | get() | in the emitter | Kafka ack | to the fold call | fold call "
          "| after the ack | samples matched |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        cls, label, keeps = SYSTEMS[name]
        system = cls(label.format(**versions), keeps, f"hops{uuid.uuid4().hex[:8]}", isolated("peers"))
        system.setup()
        try:
            # One waiting client, beside writer 0, whose hops are timed.
            r = measure(system, args.tasks, args.writers, args.sample_every, 1, hops_writer)
        finally:
            system.teardown()
        [hops] = r["writer0"]
        cols: dict[str, list[float]] = {k: [] for k in ("get", "emitter", "ack", "to_fold", "fold", "after")}
        matched = 0
        for i, done in r["waits"].items():
            returned = r["stamps"][i]
            handed, acked, fold_began, fold_returned = hops[i]
            cols["get"].append((done - returned) / 1e6)
            if handed is None or acked is None:
                continue
            matched += 1
            cols["emitter"].append((handed - returned) / 1e6)
            cols["ack"].append((acked - handed) / 1e6)
            if fold_began is not None and fold_returned is not None:
                cols["to_fold"].append((fold_began - acked) / 1e6)
                cols["fold"].append((fold_returned - fold_began) / 1e6)
            else:
                cols["after"].append((done - acked) / 1e6)
        print(f"| {system.name} | {r['tasks_per_s']:,.0f} | "
              + " | ".join(_quantiles(cols[k]) for k in cols)
              + f" | {matched} of {len(r['waits'])} |", flush=True)
    print("\n(ms, p50 / p90; each hop's figures are over the samples matched)")


if __name__ == "__main__":
    main()
