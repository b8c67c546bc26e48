"""Where the live fold stands: per partition, the stores' position and the log's end.

The fold engine keeps, per assigned partition, the next offset both stores hold (set
from the stores at assignment, moved on by every written batch). The log's end comes
from two places: the high watermark of the consumer's last fetch (free, but it stops
moving while the fetcher holds back because the fold is behind), and
:class:`LogEnds`, a task that asks the broker once a second, outside the fold loop
(so a slow broker never stalls a batch). The larger of the two is used.

:func:`readiness` is the one place that decides whether a processor is ready; the
health endpoint and the ``resultlog_ready`` metric both read it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import TopicPartition  # type: ignore[import-untyped]

from resultlog.background import cancel_and_wait

log = logging.getLogger("resultlog.processor")

#: How often the log's end offsets are asked of the broker.
LOG_END_INTERVAL_S: Final = 1.0
#: A log end learnt longer ago than this is unknown: the processor is not ready.
LOG_END_STALE_S: Final = 15.0


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """One assigned partition: ``position`` is the next offset both stores hold;
    ``log_end`` the offset the next event appended to it will get (None: not known yet)."""

    position: int
    log_end: int | None

    @property
    def lag(self) -> int | None:
        """Offsets in the log the stores do not hold yet (never negative)."""
        if self.log_end is None:
            return None
        return max(0, self.log_end - self.position)


@dataclass(frozen=True, slots=True)
class FoldStatus:
    """A snapshot of the live fold, for the health endpoint and the metrics."""

    #: The group gave this processor its partitions and each one was positioned (an
    #: empty assignment counts: more processors than partitions). False from a
    #: revocation until the next assignment is positioned.
    assigned: bool
    partitions: dict[int, PartitionProgress]
    #: Seconds since the broker last told the log's end offsets (None: never).
    log_end_age_s: float | None
    #: The fold stopped on an error (the worker is stopping).
    failed: bool
    rebuilding: bool
    rebuilt_events: int


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reason: str


def readiness(status: FoldStatus, max_lag: int) -> Readiness:
    """Ready: assigned, and every assigned partition within ``max_lag`` offsets of the
    log's end as the broker told it less than :data:`LOG_END_STALE_S` ago."""
    if status.failed:
        return Readiness(False, "the fold stopped on an error")
    if not status.assigned:
        return Readiness(False, "waiting for the consumer group to assign partitions")
    if not status.partitions:
        return Readiness(True, "no partitions assigned (more processors than partitions)")
    if status.log_end_age_s is None or status.log_end_age_s > LOG_END_STALE_S:
        return Readiness(False, "the log's end offsets are not known (the broker has not answered)")
    unknown = sorted(p for p, pp in status.partitions.items() if pp.lag is None)
    if unknown:
        return Readiness(False, f"the log's end is not known for partition(s) {unknown}")
    behind = {p: pp.lag for p, pp in sorted(status.partitions.items())
              if pp.lag is not None and pp.lag > max_lag}
    if behind:
        return Readiness(False, f"behind by more than {max_lag} offsets: "
                                + ", ".join(f"partition {p} lag {lag}" for p, lag in behind.items()))
    return Readiness(True, f"caught up: {len(status.partitions)} partition(s) within {max_lag} offsets")


class LogEnds:
    """Asks the broker for the end offsets of the assigned partitions every
    :data:`LOG_END_INTERVAL_S`, in a task of its own."""

    def __init__(self, consumer: Any, topic: str, partitions: Callable[[], Collection[int]],
                 timeout_s: float) -> None:
        self._consumer = consumer
        self._topic = topic
        self._partitions = partitions
        self._timeout_s = timeout_s
        self.ends: dict[int, int] = {}
        self.updated_at: float | None = None  # time.monotonic() of the last answer
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="log-ends")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def age_s(self) -> float | None:
        return None if self.updated_at is None else time.monotonic() - self.updated_at

    async def _run(self) -> None:
        while True:
            partitions = sorted(self._partitions())
            if partitions:
                tps = [TopicPartition(self._topic, p) for p in partitions]
                try:
                    answer = await asyncio.wait_for(self._consumer.end_offsets(tps), self._timeout_s)
                    self.ends = {tp.partition: int(o) for tp, o in answer.items()}
                    self.updated_at = time.monotonic()
                except Exception as exc:  # never die: readiness would silently freeze
                    log.info("asking the log's end offsets failed (%r); readiness waits", exc)
            else:
                self.updated_at = time.monotonic()
            await asyncio.sleep(LOG_END_INTERVAL_S)
