"""The pure parts of Celery chords: the records, and their fold in the aggregator's table."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from resultlog.errors import ValidationError
from resultlog.chords.fold import ChordFold
from resultlog.chords.celeryfold import run_event_id, summary_key
from resultlog.chords.celeryrecords import CeleryChordRecord
from resultlog.chords.records import ChordCompleted, completion_event_id
from resultlog.schemas.codec import CELERY_CHORD, Codec
from resultlog.schemas.event import ExceptionInfo
from resultlog.schemas.states import State
from tests.unit.test_chords import ENTRY_BYTES, crash

CHORD = "group-1"
TS = 1_700_000_000_000
BODY = json.dumps({"task": "t.total", "args": [], "kwargs": {}, "options": {"task_id": "body-1"}})


def part(index: int | None, task_id: str | None = None, state: State = State.SUCCESS,
         result: Any = None) -> CeleryChordRecord:
    exc = ExceptionInfo("KeyError", "builtins", f"no row {index}") if state is State.FAILURE else None
    rec = CeleryChordRecord.part(
        CHORD, task_id or f"t{index}", index, state,
        result=json.dumps(index if result is None else result) if state is State.SUCCESS else None,
        exception=exc, body=BODY)
    # Distinct, fixed timestamps: a completion's timestamp is the latest of its records'.
    return dataclasses.replace(rec, timestamp=TS + 7 * (index or 0))


def run(records: list[CeleryChordRecord], table: dict[str, Any] | None = None
        ) -> tuple[list[ChordCompleted], list[str | None], dict[str, Any]]:
    """Feed records through the codec to a fold as the aggregator does (publish, fire,
    then mark); the completions and the bodies they carried."""
    table = {} if table is None else table
    fold, codec = ChordFold(table, ENTRY_BYTES), Codec()
    completions, bodies = [], []
    for rec in records:
        name, record = codec.decode_record(rec.encode(codec))
        step = fold.apply(name, record)
        if step is not None and step.completion is not None:
            completions.append(step.completion)
            bodies.append(step.body)
            fold.completed(step.completion)
    return completions, bodies, table


def messy(draw: st.DrawFn, records: list[CeleryChordRecord]) -> list[CeleryChordRecord]:
    out = records + draw(st.lists(st.sampled_from(records), max_size=len(records)))
    draw(st.randoms(use_true_random=False)).shuffle(out)
    return out


@hsettings(max_examples=200)
@given(st.integers(1, 8), st.data())
def test_any_order_and_duplication_fires_once_with_results_in_member_order(
    size: int, data: st.DataObject
) -> None:
    """The size may come before, between or after the members (Celery sets it just before
    sending the last one); a member returned twice counts once."""
    records = messy(data.draw, [CeleryChordRecord.sized(CHORD, size)] + [part(i) for i in range(size)])
    completions, bodies, table = run(records)
    assert len(completions) == 1 and bodies == [BODY]
    done = completions[0]
    assert done.state is State.SUCCESS and done.result_values() == list(range(size))
    assert done.event_id == completion_event_id(CHORD)
    assert set(table) == {summary_key(CHORD)}  # members' entries and the body dropped


def test_nothing_fires_before_the_size_is_known() -> None:
    completions, _, _ = run([part(0), part(1)])
    assert completions == []
    completions, _, _ = run([part(0), part(1), CeleryChordRecord.sized(CHORD, 3)])
    assert completions == []


def test_a_task_added_to_the_chord_shares_an_index_and_counts_once() -> None:
    """Task.add_to_chord gives the new task its adder's index; re-reading the add record
    (after a crash) does not count it twice."""
    add = CeleryChordRecord.added(CHORD)
    records = [CeleryChordRecord.sized(CHORD, 2), part(0), add, add, part(1), part(0, "t0")]
    completions, _, _ = run(records)
    assert completions == []
    completions, _, _ = run(records + [part(0, "added", result="x")])
    # One index: ordered by task id, as Celery's Redis backend orders its sorted set
    # (by index, then by the encoded entry, which starts with the task id).
    assert len(completions) == 1 and completions[0].result_values() == ["x", 0, 1]


def test_tasks_added_cost_the_summary_nothing_each() -> None:
    """Each add record is a key of its own: the summary, rewritten at every record, stays
    small however many tasks are added (a list of their ids grew past the changelog's
    record limit at some 30,000, and made the changelog quadratic long before)."""
    from resultlog.chords.changelog import PartitionTable

    table = PartitionTable()
    adds = [CeleryChordRecord.added(CHORD) for _ in range(3000)]
    records = [CeleryChordRecord.sized(CHORD, 1), *adds, *adds[:10], part(0)]
    completions, _, _ = run(records[:-1], table)  # type: ignore[arg-type]
    summaries = [v for k, v in table.take_changes() if k == json.dumps(summary_key(CHORD)).encode()]
    assert completions == [] and max(len(v or b"") for v in summaries) < 300
    added = [part(0, f"added-{k}", result=k) for k in range(3000)]
    completions, _, _ = run(records[-1:] + added[:-1], table)  # type: ignore[arg-type]
    assert completions == []
    completions, _, _ = run(added[-1:], table)  # type: ignore[arg-type]
    assert len(completions) == 1 and completions[0].size == 3001
    assert set(table) == {summary_key(CHORD)}  # the adds' keys dropped with the members'


def test_a_summary_holding_its_adds_as_a_list_is_read_as_before() -> None:
    """A changelog written before adds were keys: the ids it lists count once."""
    add, other = CeleryChordRecord.added(CHORD), CeleryChordRecord.added(CHORD)
    table: dict[str, Any] = {summary_key(CHORD): {
        "celery": True, "size": 1, "adds": [add.event_id], "done": 0, "fail_seq": None,
        "ts": TS, "completed": None, "run": 0, "starts": []}}
    completions, _, _ = run([add, other, add, part(0), part(0, "a1"), part(0, "a2")], table)
    assert len(completions) == 1 and completions[0].size == 3
    assert set(table) == {summary_key(CHORD)}


def test_members_without_an_index_come_last() -> None:
    completions, _, _ = run([part(None, "z", result="none"), part(1), part(0),
                             CeleryChordRecord.sized(CHORD, 3)])
    assert completions[0].result_values() == [0, 1, "none"]


@pytest.mark.parametrize("first, second", [("1,2", "3"), ('{"a":1}]', "[9"), ("nope", "3"), ("9" * 5000, "3")])
def test_a_member_whose_result_is_not_exactly_one_json_value_fails_the_chord_naming_it(
    first: str, second: str,
) -> None:
    """Another producer's record may hold any text as a member's result: spliced as text,
    ``1,2`` and ``3`` fired the body with 3 values for 2 members, and the others with
    results no reader (nor the body's kombu) could decode."""
    raw = [dataclasses.replace(part(0), result=first), dataclasses.replace(part(1), result=second)]
    completions, bodies, _ = run(raw + [CeleryChordRecord.sized(CHORD, 2)])
    assert len(completions) == 1 and bodies == [BODY]
    done = completions[0]
    assert done.state is State.FAILURE and done.results is None and done.failed_member is not None
    exc = done.failed_member.exception
    assert (done.failed_member.index, done.failed_member.task_id) == (0, "t0")
    assert exc is not None and (exc.type, exc.module) == ("ResultNotSerializable", "resultlog.errors")
    assert "task t0 is not JSON text" in exc.message


@hsettings(max_examples=100)
@given(st.integers(2, 6), st.data())
def test_a_failed_member_fails_the_chord_at_once_naming_it(size: int, data: st.DataObject) -> None:
    failing = data.draw(st.integers(0, size - 1))
    state = data.draw(st.sampled_from([State.FAILURE, State.REVOKED]))
    before = [part(i) for i in range(size) if i < failing]
    after = [part(i) for i in range(size) if i > failing]
    completions, bodies, _ = run(before + [part(failing, state=state)] + after
                                 + [CeleryChordRecord.sized(CHORD, size)])
    # Fail fast: without waiting for the others, nor for the size.
    assert len(completions) == 1 and bodies == [BODY]
    done = completions[0]
    assert done.state is State.FAILURE and done.failed_member is not None
    assert done.failed_member.index == failing and done.failed_member.task_id == f"t{failing}"
    assert done.failed_member.state is state
    if state is State.FAILURE:
        assert done.failed_member.exception == ExceptionInfo("KeyError", "builtins", f"no row {failing}")


@hsettings(max_examples=300)
@given(st.integers(1, 6), st.booleans(), st.data())
def test_a_crash_at_any_point_of_the_changelog_still_fires_the_body_once(
    size: int, failing: bool, data: st.DataObject
) -> None:
    """A crash keeps a prefix of the changelog; the records not committed are read again.

    A completion published (and its body fired) before the crash is published again only
    if its completed mark did not reach the changelog, and then with the same event id
    (the firing mark in Redis, tested end to end, stops a second firing)."""
    start = CeleryChordRecord.started(CHORD)
    adds = data.draw(st.integers(0, 3), label="tasks added")
    records = [start, CeleryChordRecord.sized(CHORD, size)] + [
        part(i, state=State.FAILURE if failing and i == size - 1 else State.SUCCESS)
        for i in range(size)] + [CeleryChordRecord.added(CHORD) for _ in range(adds)] + [
        part(0, f"added-{k}", result=k) for k in range(adds)]
    # The start comes first (it is acknowledged before any member is sent); read again,
    # it may come anywhere after.
    records = [start] + messy(data.draw, records)
    want, _, _ = run(records)
    kept, committed, published = crash(data, [(CELERY_CHORD, rec.to_record()) for rec in records])
    fired_before = [want[0]] * published
    again, _, after = run(records[committed:], kept)
    fired = fired_before + again
    assert fired and all(c == want[0] for c in fired)
    assert after[summary_key(CHORD)]["completed"] == want[0].state.value


def test_applying_a_completed_chord_again_is_a_new_run_that_fires_again() -> None:
    """A frozen chord reuses its group id (and its members' task ids): after its start
    record, the second run counts its members afresh and fires with its own event id."""
    first = [CeleryChordRecord.started(CHORD), part(0), CeleryChordRecord.sized(CHORD, 2), part(1)]
    second = [CeleryChordRecord.started(CHORD), part(0, result="a"),
              CeleryChordRecord.sized(CHORD, 2), part(1, result="b")]
    completions, bodies, table = run(first + second)
    assert [c.result_values() for c in completions] == [[0, 1], ["a", "b"]]
    assert bodies == [BODY, BODY]
    assert [c.event_id for c in completions] == [completion_event_id(CHORD), run_event_id(CHORD, 1)]
    assert completions[0].event_id != completions[1].event_id
    assert table[summary_key(CHORD)]["run"] == 1 and set(table) == {summary_key(CHORD)}


def test_a_start_while_a_run_is_open_changes_nothing() -> None:
    """Runs that overlap merge, members counted once (as Celery's Redis backend does);
    a start read again after the run completed is not a run of its own either."""
    start = CeleryChordRecord.started(CHORD)
    records = [start, CeleryChordRecord.sized(CHORD, 2), part(0), start, part(0), part(1)]
    completions, _, table = run(records)
    assert [c.result_values() for c in completions] == [[0, 1]]
    assert table[summary_key(CHORD)]["run"] == 0
    # A late member of the finished run, or its start read again, change nothing.
    completions, _, after = run([part(1), start, part(0), part(1)], table)
    assert completions == [] and after[summary_key(CHORD)]["run"] == 0


def test_records_round_trip_and_bad_ones_are_refused() -> None:
    codec = Codec()
    for rec in [CeleryChordRecord.started(CHORD), CeleryChordRecord.sized(CHORD, 3), CeleryChordRecord.added(CHORD),
                part(2), part(None, state=State.FAILURE)]:
        name, record = codec.decode_record(rec.encode(codec))
        assert name == CELERY_CHORD and CeleryChordRecord.from_record(record) == rec
    with pytest.raises(ValidationError, match="kind"):
        CeleryChordRecord("0" * 32, CHORD, 1, "unlock")
    with pytest.raises(ValidationError, match="size"):
        CeleryChordRecord.sized(CHORD, -1)
    with pytest.raises(ValidationError, match="state"):
        CeleryChordRecord.part(CHORD, "t", 0, State.STARTED)


def test_a_body_too_large_for_the_changelog_is_refused_before_anything_is_written() -> None:
    """A body of raw control characters (no JSON writer leaves them raw) takes 6 bytes a
    byte in the changelog: within the event limit, over the record limit, a write the
    changelog refused for ever. The part is refused (the aggregator dead-letters it)."""
    table: dict[str, Any] = {}
    forged = dataclasses.replace(part(0), body="\x01" * (ENTRY_BYTES // 5))
    with pytest.raises(ValidationError, match=f"chord {CHORD}: its body takes .* over its {ENTRY_BYTES}-byte limit"):
        run([forged], table)
    assert table == {}
    # The same member with its body as Celery writes it completes the chord.
    completions, bodies, _ = run([CeleryChordRecord.sized(CHORD, 1), part(0)], table)
    assert [(c.state, c.results) for c in completions] == [(State.SUCCESS, "[0]")] and bodies == [BODY]
