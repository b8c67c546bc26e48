"""Readiness (processors/foldstatus.py) and the metrics it feeds (processors/metrics.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from resultlog.errors import ConfigurationError
from resultlog.processors.foldstatus import LOG_END_STALE_S, FoldStatus, PartitionProgress, readiness
from resultlog.processors.metrics import ProcessorMetrics
from resultlog.settings import Settings
from resultlog.views.history import STATE_COLUMN


def status(partitions: dict[int, PartitionProgress], *, assigned: bool = True,
           age: float | None = 0.5, failed: bool = False) -> FoldStatus:
    return FoldStatus(assigned=assigned, partitions=partitions, log_end_age_s=age,
                      failed=failed, rebuilding=False, rebuilt_events=0)


progress = st.builds(PartitionProgress, st.integers(0, 10**9),
                     st.one_of(st.none(), st.integers(0, 10**9)))


@given(st.dictionaries(st.integers(0, 63), progress, min_size=1), st.integers(0, 10**6))
def test_ready_exactly_when_every_partition_is_known_and_within_the_lag(
        partitions: dict[int, PartitionProgress], max_lag: int) -> None:
    expected = all(pp.log_end is not None and pp.log_end - pp.position <= max_lag
                   for pp in partitions.values())
    assert readiness(status(partitions), max_lag).ready is expected


def test_lag_is_the_log_end_minus_the_position_never_negative() -> None:
    assert PartitionProgress(10, 25).lag == 15
    assert PartitionProgress(30, 25).lag == 0  # a log end learnt before the last write
    assert PartitionProgress(10, None).lag is None


def test_not_ready_before_assignment_after_a_failure_or_with_stale_log_ends() -> None:
    caught_up = {0: PartitionProgress(5, 5)}
    assert readiness(status(caught_up), 0).ready
    assert not readiness(status({}, assigned=False), 0).ready
    assert not readiness(status(caught_up, failed=True), 0).ready
    assert not readiness(status(caught_up, age=None), 0).ready
    stale = readiness(status(caught_up, age=LOG_END_STALE_S + 1), 0)
    assert not stale.ready and "not known" in stale.reason
    behind = readiness(status({0: PartitionProgress(5, 5), 3: PartitionProgress(0, 50)}), 10)
    assert not behind.ready and "partition 3 lag 50" in behind.reason


def test_an_empty_assignment_is_ready() -> None:
    """More processors than partitions: the idle member must not block a rollout."""
    assert readiness(status({}, age=None), 0).ready


def _row(state: str) -> tuple[object, ...]:
    row: list[object] = [None] * (STATE_COLUMN + 3)
    row[STATE_COLUMN] = state
    return tuple(row)


def test_metrics_count_events_by_state_and_read_lag_at_scrape() -> None:
    current = status({0: PartitionProgress(7, 10), 1: PartitionProgress(4, 4)})
    m = ProcessorMetrics(lambda: current, ready_max_lag=2)
    m.batch_written([_row("SUCCESS"), _row("SUCCESS"), _row("FAILURE")], 0.004, 0.001, 2)
    m.write_retried("fold")
    m.chord_completed("FAILURE")
    m.dead_lettered("chords")
    get = m.registry.get_sample_value
    assert get("resultlog_events_folded_total", {"state": "SUCCESS"}) == 2
    assert get("resultlog_events_folded_total", {"state": "FAILURE"}) == 1
    assert get("resultlog_events_folded_total", {"state": "STARTED"}) == 0
    assert get("resultlog_batch_write_seconds_count", {"store": "history"}) == 1
    assert get("resultlog_batch_write_seconds_bucket", {"store": "redis", "le": "0.001"}) == 1
    assert get("resultlog_dead_letters_total", {"stage": "fold"}) == 2
    assert get("resultlog_dead_letters_total", {"stage": "chords"}) == 1
    assert get("resultlog_write_retries_total", {"stage": "fold"}) == 1
    assert get("resultlog_chord_completions_total", {"state": "FAILURE"}) == 1
    assert get("resultlog_partition_lag", {"partition": "0"}) == 3
    assert get("resultlog_partition_lag", {"partition": "1"}) == 0
    assert get("resultlog_assigned_partitions") == 2
    assert get("resultlog_ready") == 0  # partition 0 is 3 behind, more than 2
    current = status({1: PartitionProgress(4, 4)})  # partition 0 revoked
    assert get("resultlog_partition_lag", {"partition": "0"}) is None
    assert get("resultlog_ready") == 1
    assert b"resultlog_partition_position" in generate_latest(m.registry)


@pytest.mark.parametrize("name, value", [("metrics_port", 70000), ("metrics_port", -1),
                                          ("ready_max_lag", -5), ("metrics_host", "")])
def test_bad_metrics_settings_name_the_variable(name: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"RESULTLOG_{name.upper()}"):
        Settings(**{name: value})  # type: ignore[arg-type]


def _served_names() -> set[str]:
    """Every resultlog_* sample name a processor's registry serves."""
    m = ProcessorMetrics(lambda: status({0: PartitionProgress(1, 2)}), ready_max_lag=0)
    m.batch_written([_row("SUCCESS")], 0.001, 0.001, 0)
    return {s.name for fam in m.registry.collect() for s in fam.samples if s.name.startswith("resultlog_")}


def test_every_metric_is_documented_and_every_documented_metric_is_served() -> None:
    import re
    from pathlib import Path

    docs = Path(__file__).parents[2] / "docs"
    table = (docs / "operations.md").read_text()
    alerts = (docs / "resultlog-alerts.yml").read_text()
    served = {n for n in _served_names() if not n.endswith("_created")}
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in served}
    documented = set(re.findall(r"`(resultlog_[a-z_]+)`", table))
    assert families == documented, (families - documented, documented - families)
    used = set(re.findall(r"\b(resultlog_[a-z_]+)", alerts))
    assert used <= served | families, used - served - families
