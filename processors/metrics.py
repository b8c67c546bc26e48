"""The processor's Prometheus metrics (``prometheus_client``), one registry per processor:
counted once per batch (never per event, for the fold's hot path), or read from the
engine's :class:`FoldStatus` when scraped. docs/operations.md describes each metric,
what they cost and alert rules.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from resultlog.processors.foldstatus import FoldStatus, readiness
from resultlog.schemas.states import State
from resultlog.schemas.taskrows import STATE_COLUMN

NAMESPACE: Final = "resultlog"
#: Seconds. A small batch's single statement takes well under a millisecond; a 5,000-event
#: batch tens of milliseconds; a store in trouble, seconds.
WRITE_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                        1.0, 2.5, 5.0, 10.0)
#: The ``store`` label of ``resultlog_batch_write_seconds``.
STORES: Final = ("history", "redis")
#: The ``stage`` label: the fold (events -> stores) or the chord aggregator.
STAGES: Final = ("fold", "chords")

_state_of_row = itemgetter(STATE_COLUMN)


class ProcessorMetrics:
    """Every metric one processor serves; the engine and the aggregator report to it."""

    def __init__(self, status: Callable[[], FoldStatus], ready_max_lag: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._folded = Counter(
            "events_folded", "Events written to both stores, by task state (a batch re-read "
            "after a crash counts again)", ["state"], namespace=NAMESPACE, registry=r)
        self._write_seconds = Histogram(
            "batch_write_seconds", "Time to write one batch into a store (successful "
            "attempts only)", ["store"], namespace=NAMESPACE, buckets=WRITE_BUCKETS, registry=r)
        self._dead_letters = Counter(
            "dead_letters", "Records sent to the dead-letter topic, by stage",
            ["stage"], namespace=NAMESPACE, registry=r)
        self._retries = Counter(
            "write_retries", "Writes retried because a store or the broker was unavailable "
            "(or the Redis view was lost), by stage", ["stage"], namespace=NAMESPACE, registry=r)
        self._completions = Counter(
            "chord_completions", "Chords completed by the aggregator, by outcome",
            ["state"], namespace=NAMESPACE, registry=r)
        # Children resolved once: labels() costs a lock and a dict lookup per call.
        self._folded_by_state = {s.value: self._folded.labels(s.value) for s in State}
        self._write_by_store = {s: self._write_seconds.labels(s) for s in STORES}
        self._dead_by_stage = {s: self._dead_letters.labels(s) for s in STAGES}
        self._retries_by_stage = {s: self._retries.labels(s) for s in STAGES}
        for state in (State.SUCCESS, State.FAILURE):
            self._completions.labels(state.value)
        r.register(_StatusCollector(status, ready_max_lag))

    # -- reported by the engine, once per batch ----------------------------------------

    def batch_written(self, rows: Sequence[Sequence[Any]], history_s: float, redis_s: float,
                      dead_letters: int) -> None:
        for state, n in Tally(map(_state_of_row, rows)).items():
            child = self._folded_by_state.get(state)
            if child is None:  # a state this version does not list: counted all the same
                child = self._folded_by_state[state] = self._folded.labels(state)
            child.inc(n)
        if history_s:
            self._write_by_store["history"].observe(history_s)
        if redis_s:
            self._write_by_store["redis"].observe(redis_s)
        if dead_letters:
            self._dead_by_stage["fold"].inc(dead_letters)

    def write_retried(self, stage: str) -> None:
        self._retries_by_stage[stage].inc()

    # -- reported by the chord aggregator ----------------------------------------------

    def dead_lettered(self, stage: str, n: int = 1) -> None:
        self._dead_by_stage[stage].inc(n)

    def chord_completed(self, state: str) -> None:
        self._completions.labels(state).inc()


class _StatusCollector(Collector):
    """Metrics read from the engine's status at scrape time (nothing on the hot path)."""

    def __init__(self, status: Callable[[], FoldStatus], ready_max_lag: int) -> None:
        self._status = status
        self._max_lag = ready_max_lag

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        return self._families(self._status())

    def _families(self, st: FoldStatus | None) -> Iterator[Metric]:
        n = NAMESPACE
        lag = GaugeMetricFamily(f"{n}_partition_lag", "Offsets of the events topic the stores "
                                "do not hold yet: the log's end minus the stores' position",
                                labels=["partition"])
        position = GaugeMetricFamily(f"{n}_partition_position", "The next offset both stores "
                                     "hold, per assigned partition", labels=["partition"])
        log_end = GaugeMetricFamily(f"{n}_partition_log_end", "The events topic's end offset, "
                                    "per assigned partition", labels=["partition"])
        assigned = GaugeMetricFamily(f"{n}_assigned_partitions",
                                     "Partitions of the events topic this processor folds")
        ready = GaugeMetricFamily(f"{n}_ready", "1 when the health endpoint says ready: "
                                  "assigned and caught up within RESULTLOG_READY_MAX_LAG")
        age = GaugeMetricFamily(f"{n}_log_end_age_seconds", "Seconds since the broker last "
                                "told the log's end offsets")
        rebuilding = GaugeMetricFamily(f"{n}_view_rebuilds_in_progress", "1 while lost "
                                       "parts of the Redis view are being rebuilt from the log")
        rebuilt = CounterMetricFamily(f"{n}_view_rebuilt_events", "Events folded into the "
                                      "Redis view by rebuilds of what it lost")
        if st is not None:
            for p, pp in sorted(st.partitions.items()):
                position.add_metric([str(p)], pp.position)
                if pp.log_end is not None and pp.lag is not None:
                    log_end.add_metric([str(p)], pp.log_end)
                    lag.add_metric([str(p)], pp.lag)
            assigned.add_metric([], len(st.partitions))
            ready.add_metric([], 1 if readiness(st, self._max_lag).ready else 0)
            if st.log_end_age_s is not None:
                age.add_metric([], st.log_end_age_s)
            rebuilding.add_metric([], 1 if st.rebuilding else 0)
            rebuilt.add_metric([], st.rebuilt_events)
        yield from (lag, position, log_end, assigned, ready, age, rebuilding, rebuilt)
