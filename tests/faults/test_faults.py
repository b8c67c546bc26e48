"""The fault suite: each fault injected into a 40,000-event stream from two emitter
processes on a private stack; every row must read 0 lost, 0 duplicated, 0 wrong, with
the view complete again without any manual step (bench/faultkit.py says how each figure
is taken; `python -m bench.faults` prints the table)."""

from __future__ import annotations

import pytest

from bench.faultkit import FAULTS, Row, run_fault

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("name", list(FAULTS))
async def test_no_fault_loses_duplicates_or_hides_a_result(name: str) -> None:
    row: Row = await run_fault(FAULTS[name])
    print(Row.HEADER + "\n" + row.render())
    assert row.accepted >= 40_000, row.render()
    assert (row.lost, row.duplicates, row.wrong) == (0, 0, 0), row.render()
    assert row.recovery_s is not None and not row.problems, row.render()
