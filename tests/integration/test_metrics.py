"""The processor's /metrics and health endpoints, on a real ``resultlog process``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from resultlog.producers import Emitter, declare_chord
from resultlog.schemas.event import ExceptionInfo, TaskEvent
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.devstack.process import free_port
from tests.integration.processes import ProcessorProcess
from tests.integration.test_pipeline import eventually, produce_raw

pytestmark = pytest.mark.integration


class Endpoint:
    def __init__(self, settings: Settings) -> None:
        self.base = f"http://127.0.0.1:{settings.metrics_port}"

    async def get(self, path: str) -> tuple[int, str]:
        """(status, body); (0, reason) while nothing listens yet."""
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(self.base + path, timeout=aiohttp.ClientTimeout(total=5)) as r:
                    return r.status, await r.text()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return 0, repr(exc)

    async def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, body = await self.get("/metrics")
        assert status == 200, body
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_partition(samples: dict[Any, float], name: str) -> dict[str, float]:
    return {dict(labels)["partition"]: v for (n, labels), v in samples.items() if n == name}


def events(n_ok: int, n_failed: int) -> Iterator[TaskEvent]:
    for i in range(n_ok):
        for state in (State.RECEIVED, State.STARTED, State.SUCCESS):
            yield TaskEvent.create(f"ok-{i}", state, result=i if state is State.SUCCESS else None)
    for i in range(n_failed):
        yield TaskEvent.create(f"bad-{i}", State.FAILURE,
                               exc=ExceptionInfo.from_exception(ValueError(i)))


async def test_metrics_move_as_events_flow_and_readiness_follows(settings: Settings) -> None:
    s = settings.replace(metrics_port=free_port(), ready_max_lag=0)
    http = Endpoint(s)
    with ProcessorProcess(s) as proc:
        async def live() -> bool:
            return (await http.get("/health/live"))[0] == 200
        await eventually(live, f"/health/live answering 200\n{proc.output()[-3000:]}")

        async def ready() -> bool:
            return (await http.get("/health/ready"))[0] == 200
        await eventually(ready, f"/health/ready answering 200 on an empty topic\n{proc.output()[-3000:]}")
        before = await http.samples()
        assert value(before, "resultlog_ready") == 1
        assert value(before, "resultlog_assigned_partitions") == s.topic_partitions
        assert value(before, "resultlog_events_folded_total", state="SUCCESS") == 0
        assert value(before, "resultlog_batch_write_seconds_count", store="history") == 0

        # 30 tasks of 3 events, 5 failures, a chord of 3 (its declaration is a record of
        # the events topic too), 2 records no decoder accepts.
        members = [TaskEvent.create(f"ch-{i}", State.SUCCESS, result=i, chord_id="ch",
                                    chord_size=3, chord_index=i) for i in range(3)]
        async with Emitter(s) as emitter:
            await declare_chord(emitter, "ch", 3)
            for event in [*events(30, 5), *members]:
                await emitter.emit(event)
            await emitter.flush()
        await produce_raw(s, [(b"junk", b"not an event"), (None, b"\x00\x01")])
        records = 30 * 3 + 5 + 1 + 3 + 2

        async def all_counted() -> bool:
            m = await http.samples()
            return (value(m, "resultlog_events_folded_total", state="SUCCESS") == 33
                    and value(m, "resultlog_dead_letters_total", stage="fold") == 2
                    and value(m, "resultlog_chord_completions_total", state="SUCCESS") == 1
                    and sum(by_partition(m, "resultlog_partition_position").values()) == records)
        await eventually(all_counted, f"the metrics to count every event\n{proc.output()[-3000:]}")

        await eventually(ready, "ready again once caught up")
        m = await http.samples()
        assert value(m, "resultlog_events_folded_total", state="RECEIVED") == 30
        assert value(m, "resultlog_events_folded_total", state="STARTED") == 30
        assert value(m, "resultlog_events_folded_total", state="FAILURE") == 5
        for store in ("history", "redis"):
            assert value(m, "resultlog_batch_write_seconds_count", store=store) >= 1
            assert value(m, "resultlog_batch_write_seconds_sum", store=store) > 0
        assert set(by_partition(m, "resultlog_partition_lag").values()) == {0}
        assert by_partition(m, "resultlog_partition_log_end") == by_partition(m, "resultlog_partition_position")
        assert value(m, "resultlog_view_rebuilds_in_progress") == 0
        assert value(m, "resultlog_write_retries_total", stage="fold") == 0
        assert value(m, "process_resident_memory_bytes") > 0

        status, body = await http.get("/health/ready")
        assert status == 200 and '"ready": true' in body, body


async def test_a_metrics_port_in_use_stops_the_processor_naming_the_setting(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        s = settings.replace(metrics_port=int(taken.getsockname()[1]))
        proc = ProcessorProcess(s).start()
        try:
            async def stopped() -> bool:
                return not proc.alive()
            await eventually(stopped, "the processor to stop", timeout_s=60)
            assert proc.proc is not None and proc.proc.returncode != 0
            assert "RESULTLOG_METRICS_PORT" in proc.output(), proc.output()[-3000:]
        finally:
            proc.stop()
            proc.log.unlink(missing_ok=True)


async def test_a_processor_linger_gathers_events_into_batches_and_folds_a_lone_one(
        settings: Settings) -> None:
    """With RESULTLOG_PROCESSOR_LINGER_MS the broker holds the fetch for the linger: events
    acknowledged one by one are folded in a few batches, and a lone event is folded too
    (the fetch is answered when the linger passes, not only once 512 KiB arrived)."""
    s = settings.replace(metrics_port=free_port(), processor_linger_ms=1000)
    http = Endpoint(s)
    async with Emitter(s) as emitter:
        await emitter.success("warm", 0, wait=True)
        with ProcessorProcess(s) as proc:
            async def folded(n: int) -> bool:
                status, _ = await http.get("/metrics")
                return status == 200 and value(await http.samples(), "resultlog_events_folded_total",
                                               state="SUCCESS") >= n
            await eventually(lambda: folded(1), f"the lone event folded\n{proc.output()[-3000:]}")
            before = value(await http.samples(), "resultlog_batch_write_seconds_count", store="history")
            # Each acknowledged before the next is sent: one Kafka batch per event.
            for i in range(20):
                await emitter.success(f"one-by-one-{i}", i, wait=True)
            await eventually(lambda: folded(21), f"20 more events folded\n{proc.output()[-3000:]}")
            batches = value(await http.samples(), "resultlog_batch_write_seconds_count",
                            store="history") - before
            # A fetch is held for a second and the 20 events take a few milliseconds:
            # they land in one or two fetches (a fetch parked before them may be
            # answered midway). Without the linger they came in 8 batches here.
            assert 1 <= batches <= 3, batches
