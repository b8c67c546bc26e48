"""The pure parts of chords: records, the aggregator's fold, the Redis hash layout."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from resultlog.errors import ChordError, CodecError, ConfigurationError, CorruptResult, ValidationError
from resultlog.chords.changelog import max_value_bytes
from resultlog.chords.fold import ChordFold, summary_key
from resultlog.chords.aggregator import load_hook
from resultlog.chords.records import (
    ChordCompleted,
    ChordDeclared,
    FailedMember,
    completion_event_id,
)
from resultlog.schemas.codec import CHORD_DECLARED, TASK_EVENT, Codec, event_to_record
from resultlog.schemas.event import ExceptionInfo, TaskEvent
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.chords.store import chord_view_from_hash, completion_fields

CHORD = "chord-1"
#: Nesting no Python reads (3.11 fails past ~1,000, 3.12 past ~5,000, 3.13 past ~10,000).
DEEPER_THAN_JSON_READS = 100_000
# What the aggregator's tables may hold per value, with the default settings.
ENTRY_BYTES = max_value_bytes(Settings())


def member(index: int, size: int, state: State = State.SUCCESS, *, result: Any = None,
           chord_id: str = CHORD, ts: int = 1_700_000_000_000, exc: str = "boom") -> TaskEvent:
    return TaskEvent.create(
        f"{chord_id}-t{index}", state, result=index * 10 if result is None else result,
        timestamp=ts + index, chord_id=chord_id, chord_size=size, chord_index=index,
        exc=ExceptionInfo("ValueError", "builtins", f"{exc} {index}") if state is State.FAILURE else None,
    )


def declared(size: int, *, wait_all: bool = False, chord_id: str = CHORD, ts: int = 1_700_000_000_500) -> ChordDeclared:
    return ChordDeclared.create(chord_id, size, callback="tasks.sum", callback_kwargs={"k": 1},
                                wait_all=wait_all, timestamp=ts)


Record = ChordDeclared | TaskEvent


def run(records: list[Record], table: dict[str, Any] | None = None) -> tuple[list[ChordCompleted], dict[str, Any]]:
    """Feed records to a fold as the agent does (publish, then mark); the completions."""
    table = {} if table is None else table
    fold = ChordFold(table, ENTRY_BYTES)
    out = []
    for rec in records:
        if isinstance(rec, ChordDeclared):
            step = fold.apply(CHORD_DECLARED, rec.to_record())
        else:
            step = fold.apply(TASK_EVENT, event_to_record(rec))
        if step is not None and step.completion is not None:
            out.append(step.completion)
            fold.completed(step.completion)
    return out, table


def messy(draw: st.DrawFn, records: list[Record]) -> list[Record]:
    dupes = draw(st.lists(st.sampled_from(records), max_size=len(records) * 2))
    out = records + dupes
    draw(st.randoms(use_true_random=False)).shuffle(out)
    return out


# --- records -------------------------------------------------------------------------


def test_declaration_and_completion_round_trip_through_the_codec() -> None:
    codec = Codec()
    decl = declared(3, wait_all=True)
    name, record = codec.decode_record(decl.encode(codec))
    assert name == CHORD_DECLARED and ChordDeclared.from_record(record) == decl
    assert json.loads(decl.callback_kwargs or "") == {"k": 1}
    failed = ChordCompleted(
        completion_event_id(CHORD), CHORD, State.FAILURE, 3, 2, 1, 5,
        failed_member=FailedMember("t1", 1, State.FAILURE, ExceptionInfo("KeyError", "builtins", "'x'")),
        callback="tasks.sum")
    ok = ChordCompleted(completion_event_id(CHORD), CHORD, State.SUCCESS, 2, 2, 0, 5, results="[1,2]")
    for completion in (failed, ok):
        assert ChordCompleted.decode(codec, completion.encode(codec)) == completion
    assert ok.result_values() == [1, 2]
    assert failed.error_message() == "chord chord-1 failed: member 1 (task t1) raised KeyError: 'x'"
    assert isinstance(failed.error(), ChordError)
    with pytest.raises(CodecError):
        ChordCompleted.decode(codec, decl.encode(codec))


def test_completion_ids_are_derived_from_the_chord_id() -> None:
    assert completion_event_id("a") == completion_event_id("a") != completion_event_id("b")
    assert len(completion_event_id("a")) == 32 and int(completion_event_id("a"), 16) >= 0


@pytest.mark.parametrize("size", [-1, 2**31, True, "3"])
def test_bad_sizes_are_refused(size: Any) -> None:
    with pytest.raises(ValidationError):
        ChordDeclared.create("c", size)


def test_a_completion_is_success_or_failure_naming_a_member() -> None:
    with pytest.raises(ValidationError):
        ChordCompleted("e" * 32, "c", State.STARTED, 1, 0, 0, 0)
    with pytest.raises(ValidationError):
        ChordCompleted("e" * 32, "c", State.FAILURE, 1, 1, 1, 0)


def test_the_chord_hook_setting_is_validated_and_loaded() -> None:
    assert Settings(chord_hook="json:dumps").chord_hook == "json:dumps"
    for bad in ("json", "json:", ":dumps", "a b:c"):
        with pytest.raises(ConfigurationError, match="RESULTLOG_CHORD_HOOK"):
            Settings(chord_hook=bad)
    assert load_hook("json:dumps") == json.dumps  # type: ignore[comparison-overlap]
    with pytest.raises(ConfigurationError, match="cannot be loaded"):
        load_hook("json:no_such_function")
    with pytest.raises(ConfigurationError, match="not callable"):
        load_hook("json:__name__")


# --- the fold ----------------------------------------------------------------------------


def test_a_chord_completes_once_with_results_in_index_order() -> None:
    records: list[Record] = [declared(3), member(2, 3), member(0, 3), member(1, 3)]
    completions, table = run(records + [member(1, 3), member(0, 3)])
    assert len(completions) == 1
    c = completions[0]
    assert (c.state, c.result_values(), c.done, c.failed, c.size) == (State.SUCCESS, [0, 10, 20], 3, 0, 3)
    assert c.event_id == completion_event_id(CHORD) and c.callback == "tasks.sum"
    assert c.timestamp == 1_700_000_000_500  # the latest record's, not the clock's
    # Members' entries are dropped once the outcome is out; the summary stays, marked.
    assert list(table) == [summary_key(CHORD)] and table[summary_key(CHORD)]["completed"] == "SUCCESS"


def test_members_before_the_declaration_count_and_the_declaration_completes_it() -> None:
    completions, table = run([member(0, 2), member(1, 2)])
    assert completions == [] and table[summary_key(CHORD)]["done"] == 2
    completions, _ = run([declared(2)], table)
    assert [c.result_values() for c in completions] == [[0, 10]]


def test_an_empty_chord_completes_at_its_declaration() -> None:
    completions, _ = run([declared(0)])
    assert [c.result_values() for c in completions] == [[]]


def test_a_failing_member_fails_the_chord_at_once_naming_it() -> None:
    completions, table = run([declared(5), member(1, 5), member(3, 5, State.FAILURE)])
    assert len(completions) == 1
    c = completions[0]
    assert c.state is State.FAILURE and c.failed_member is not None
    assert (c.failed_member.index, c.failed_member.task_id) == (3, f"{CHORD}-t3")
    assert c.failed_member.exception == ExceptionInfo("ValueError", "builtins", "boom 3")
    assert "member 3 (task chord-1-t3) raised ValueError: boom 3" in c.error_message()
    # Later members, and repeats of the failure, never fire again.
    more, _ = run([member(0, 5), member(3, 5, State.FAILURE), member(4, 5, State.REVOKED)], table)
    assert more == []


def test_with_wait_all_a_failure_completes_the_chord_only_after_every_member() -> None:
    completions, table = run([declared(3, wait_all=True), member(2, 3, State.REVOKED), member(0, 3)])
    assert completions == []
    completions, _ = run([member(1, 3, State.FAILURE)], table)
    assert len(completions) == 1 and completions[0].failed_member is not None
    # The lowest failed index is named, whatever the order.
    assert completions[0].failed_member.index == 1 and completions[0].failed == 2


def test_members_beyond_the_declared_size_are_ignored() -> None:
    completions, table = run([member(3, 4), member(0, 4), declared(2)])
    assert completions == [] and table[summary_key(CHORD)]["done"] == 1
    completions, _ = run([member(1, 4)], table)
    assert [c.result_values() for c in completions] == [[0, 10]]


def test_two_chords_share_a_table_independently() -> None:
    records: list[Record] = [declared(2, chord_id="a"), declared(1, chord_id="b"),
                             member(0, 2, chord_id="a"), member(0, 1, chord_id="b", result=7),
                             member(1, 2, chord_id="a")]
    completions, _ = run(records)
    assert {c.chord_id: c.result_values() for c in completions} == {"a": [0, 10], "b": [7]}


@st.composite
def success_chords(draw: st.DrawFn) -> tuple[list[Record], list[Record]]:
    size = draw(st.integers(1, 8))
    results = draw(st.lists(st.integers(-5, 5) | st.text(max_size=3), min_size=size, max_size=size))
    records: list[Record] = [declared(size)] + [member(i, size, result=r) for i, r in enumerate(results)]
    return records, messy(draw, records)


@hsettings(max_examples=300)
@given(success_chords())
def test_any_order_and_duplication_of_members_gives_the_same_completion(
    chord: tuple[list[Record], list[Record]],
) -> None:
    ordered, shuffled = chord
    want, _ = run(ordered)
    got, _ = run(shuffled)
    assert len(got) == 1 and got == want


@st.composite
def failing_chords(draw: st.DrawFn) -> tuple[list[Record], list[Record]]:
    size = draw(st.integers(1, 8))
    states = draw(st.lists(st.sampled_from([State.SUCCESS, State.FAILURE, State.REVOKED]),
                           min_size=size, max_size=size))
    records: list[Record] = [declared(size, wait_all=True)] + [member(i, size, s) for i, s in enumerate(states)]
    return records, messy(draw, records)


@hsettings(max_examples=300)
@given(failing_chords())
def test_with_wait_all_any_order_gives_the_same_outcome(chord: tuple[list[Record], list[Record]]) -> None:
    ordered, shuffled = chord
    want, _ = run(ordered)
    got, _ = run(shuffled)
    assert len(got) == 1 and got == want


class LoggedTable(dict[str, Any]):
    """A dict that keeps its writes in order: what the changelog partition receives."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, Any]] = []

    def __setitem__(self, key: str, value: Any) -> None:
        self.log.append((key, value))
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.log.append((key, None))
        super().__delitem__(key)


def recovered(log: list[tuple[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for key, value in log:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


def crash(data: st.DataObject, named: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], int, int]:
    """Fold ``named`` (record name, record) pairs on a table that logs its changelog,
    marking each completion as the aggregator does after publishing it; then crash: draw
    how much of the changelog was kept and how many records had been committed (every
    one of them has all its writes in the kept prefix).

    Returns the table recovered from the kept changelog, the number of records
    committed, and how many completions were published before the crash (their mark was
    kept)."""
    table = LoggedTable()
    fold = ChordFold(table, ENTRY_BYTES)
    ends: list[int] = []  # changelog length after each record
    marks: list[int] = []  # changelog position of each completion's mark
    for name, record in named:
        step = fold.apply(name, record)
        if step is not None and step.completion is not None:
            marks.append(len(table.log))
            fold.completed(step.completion)
        ends.append(len(table.log))
    cut = data.draw(st.integers(0, len(table.log)), label="changelog kept")
    committed = data.draw(st.integers(0, sum(1 for e in ends if e <= cut)), label="records committed")
    return recovered(table.log[:cut]), committed, sum(1 for mark in marks if mark < cut)


@hsettings(max_examples=300)
@given(success_chords() | failing_chords(), st.data())
def test_a_crash_at_any_point_of_the_changelog_still_completes_the_chord_once(
    chord: tuple[list[Record], list[Record]], data: st.DataObject,
) -> None:
    """A crash keeps a prefix of the changelog and re-reads from the last committed record.

    The aggregator has a batch's changelog writes acknowledged before it commits the
    batch's offsets, so every record before the committed one has all its writes in the
    kept prefix.
    """
    ordered, records = chord
    want, _ = run(ordered)
    kept, committed, published = crash(data, [
        (CHORD_DECLARED, rec.to_record()) if isinstance(rec, ChordDeclared)
        else (TASK_EVENT, event_to_record(rec)) for rec in records])
    emitted_before = [want[0]] * published
    again, after = run(records[committed:], kept)
    assert emitted_before + again and all(c == want[0] for c in emitted_before + again)
    assert after[summary_key(CHORD)]["completed"] == want[0].state.value


def test_a_partition_table_hands_the_changelog_its_writes_in_order_as_json() -> None:
    """What ChangelogTables sends: JSON keys and values in write order, None for a removal;
    read back in that order they give the table again."""
    from resultlog.chords.changelog import PartitionTable

    table, logged = PartitionTable(), LoggedTable()
    for mapping in (table, logged):
        fold = ChordFold(mapping, ENTRY_BYTES)
        for rec in [member(1, 2), declared(2), member(0, 2)]:
            step = (fold.apply(CHORD_DECLARED, rec.to_record()) if isinstance(rec, ChordDeclared)
                    else fold.apply(TASK_EVENT, event_to_record(rec)))
            if step is not None and step.completion is not None:
                fold.completed(step.completion)
    changes = table.take_changes()
    assert changes == [(json.dumps(k).encode(), None if v is None else json.dumps(v).encode())
                       for k, v in logged.log]
    assert any(v is None for _, v in changes)  # the members' entries, removed
    replayed = recovered([(json.loads(k), None if v is None else json.loads(v)) for k, v in changes])
    assert replayed == dict(table) and table.take_changes() == []


@hsettings(max_examples=200)
@given(st.integers(1, 8), st.data())
def test_fail_fast_completes_once_naming_a_failed_member(size: int, data: st.DataObject) -> None:
    failing = data.draw(st.sets(st.integers(0, size - 1), min_size=1))
    records: list[Record] = [declared(size)] + [
        member(i, size, State.FAILURE if i in failing else State.SUCCESS) for i in range(size)]
    got, _ = run(messy(data.draw, records))  # type: ignore[arg-type]
    assert len(got) == 1 and got[0].state is State.FAILURE
    assert got[0].failed_member is not None and got[0].failed_member.index in failing


def test_ten_thousand_members_fold_in_linear_time() -> None:
    size = 10_000
    records: list[Record] = [member(i, size) for i in range(size)] + [declared(size)]
    random.Random(1).shuffle(records)
    completions, table = run(records + records[:500])
    assert len(completions) == 1 and completions[0].result_values() == [i * 10 for i in range(size)]
    assert len(table) == 1


class ReadBudget(dict[str, Any]):
    """A table that fails a test reading it more than ``budget`` times: a walk over a
    chord's declared size rather than its members would otherwise run for hours."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget

    def _read(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise AssertionError("the fold read the table more often than the members present allow")

    def get(self, key: str, default: Any = None) -> Any:
        self._read()
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._read()
        return super().__contains__(key)

    def __getitem__(self, key: str) -> Any:
        self._read()
        return super().__getitem__(key)


BIGGEST = 2**31 - 1


def test_a_chord_of_the_largest_size_costs_what_its_members_do() -> None:
    """The fold's work follows the members present, never the declared size: with one
    member in, a chord of 2**31 - 1 members fails fast, and a repeated member of an
    undeclared one recounts that member alone."""
    completions, table = run([declared(BIGGEST), member(0, BIGGEST, State.FAILURE)], ReadBudget(100))
    assert [(c.state, c.size, c.done, c.failed) for c in completions] == [(State.FAILURE, BIGGEST, 1, 1)]
    assert list(table) == [summary_key(CHORD)]  # its one entry dropped

    completions, table = run([member(0, BIGGEST), member(0, BIGGEST)], ReadBudget(100))
    assert completions == [] and table[summary_key(CHORD)]["done"] == 1
    # A declaration that shrinks the chord recounts what is present: here, nothing below
    # it; the entry beyond it goes with the chord's completion.
    completions, table = run([member(BIGGEST - 1, BIGGEST), declared(1), member(0, 1)], ReadBudget(100))
    assert [c.result_values() for c in completions] == [[0]] and list(table) == [summary_key(CHORD)]


def test_a_member_entry_too_large_for_the_changelog_is_cut_and_the_chord_fails_naming_it() -> None:
    """A control character is 1 byte in the event and 6 in the changelog's JSON: the
    entry is cut to fit, and the chord still fails fast naming the member."""
    from resultlog.chords.changelog import PartitionTable

    message = "\x01" * 600_000 + "end"
    failing = TaskEvent.create(f"{CHORD}-t0", State.FAILURE, timestamp=1_700_000_000_000,
                               chord_id=CHORD, chord_size=2, chord_index=0,
                               exc=ExceptionInfo("ValueError", "builtins", message))
    assert len(Codec().encode_record(TASK_EVENT, event_to_record(failing))) < Settings().max_event_bytes
    table = PartitionTable()
    completions, _ = run([declared(2), failing], table)  # type: ignore[arg-type]
    assert max(len(v or b"") for _, v in table.take_changes()) <= ENTRY_BYTES
    [c] = completions
    assert c.state is State.FAILURE and c.failed_member is not None and c.failed_member.exception
    exc = c.failed_member.exception
    assert (c.failed_member.index, exc.type, exc.module) == (0, "ValueError", "builtins")
    assert "truncated from 600003 bytes" in exc.message and exc.message.endswith("end")


def with_result(event: TaskEvent, text: str) -> TaskEvent:
    """``event`` holding ``text`` as its result, unchecked: what another producer's
    record may hold (resultlog's emitters write only JSON text)."""
    from dataclasses import replace

    return replace(event, result=text)


def test_a_success_whose_result_text_no_json_writer_made_fails_the_chord_naming_it() -> None:
    """Control characters left raw: 600,000 bytes in the event, 3.6 MB in the entry, and
    not JSON text; the chord fails naming the member rather than stalls."""
    raw = with_result(member(1, 2), '"' + "\x01" * 600_000 + '"')
    completions, table = run([declared(2), member(0, 2), raw])
    [c] = completions
    assert c.state is State.FAILURE and c.failed_member is not None and c.failed_member.exception
    assert c.failed_member.index == 1 and c.failed_member.exception.type == "ResultNotSerializable"
    assert "is not JSON text" in c.failed_member.exception.message


@pytest.mark.parametrize("first, second", [
    ("1,2", "3"),  # 3 values from 2 members
    ('{"a":1}]', "[9"),  # neither is JSON, together they are: [{"a":1}],[9]
    ("nope", "3"),
    ("9" * 5000, "3"),  # past Python's 4,300 digits: a ValueError when read
    ("[" * 700 + "]" * 700, "3"),  # json.loads reads it from a shallow stack
    ("", "3"),
    ('"\x01"', "3"),  # a raw control character in a string
])
def test_a_member_whose_result_is_not_exactly_one_json_value_fails_the_chord_naming_it(
    first: str, second: str,
) -> None:
    """The members' results were spliced as text: ``1,2`` and ``3`` made a 2-member
    chord return ``[1, 2, 3]``, and a text that is not JSON made the completion's results
    unreadable (a JSONDecodeError or ValueError in every reader)."""
    records: list[Record] = [declared(2), with_result(member(0, 2), first), with_result(member(1, 2), second)]
    completions, _ = run(records)
    [c] = completions
    assert c.state is State.FAILURE and c.results is None and c.failed_member is not None
    exc = c.failed_member.exception
    assert exc is not None and (exc.type, exc.module) == ("ResultNotSerializable", "resultlog.errors")
    assert c.failed_member.index == 0 and f"task {CHORD}-t0 is not JSON text" in exc.message
    with pytest.raises(ChordError, match=rf"member 0 \(task {CHORD}-t0\) raised ResultNotSerializable"):
        raise c.error()
    # wait_all, and the second member the bad one: the same decision.
    records = [declared(2, wait_all=True), member(0, 2), with_result(member(1, 2), first)]
    [c] = run(records)[0]
    assert c.failed_member is not None and c.failed_member.index == 1


def test_a_member_result_nested_deeper_than_the_bound_fails_whatever_the_stack() -> None:
    """Python's json reads nesting as deep as the stack leaves room for: the live fold
    and a replay, called from different depths, decided differently on the same text. A
    fixed bound, checked on the text, decides the same anywhere."""
    from resultlog.chords.entries import MAX_RESULT_DEPTH, member_entry

    deepest = "[" * MAX_RESULT_DEPTH + '"[{"' + "]" * MAX_RESULT_DEPTH  # brackets in a string do not count
    deeper = "[" * (MAX_RESULT_DEPTH + 1) + "]" * (MAX_RESULT_DEPTH + 1)
    many = "[" + ",".join(["{}"] * 3000) + "]"  # many brackets, nesting 2

    def entry_state(text: str, frames: int) -> str:
        if frames:
            return entry_state(text, frames - 1)
        state: str = member_entry(State.SUCCESS, "t", text, None, 1, max_bytes=ENTRY_BYTES)[0]
        return state

    for frames in (0, 200):
        assert entry_state(deepest, frames) == entry_state(many, frames) == State.SUCCESS.value
        assert entry_state(deeper, frames) == State.FAILURE.value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
# How a producer may write a value: compact, spaced, indented, ASCII only or not.
json_writers = st.sampled_from([
    lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False),
    lambda v: json.dumps(v),
    lambda v: " \n" + json.dumps(v, indent=2) + "\t\r\n",
])


@hsettings(max_examples=200)
@given(st.lists(st.tuples(json_values, json_writers), min_size=1, max_size=5))
def test_any_json_value_a_member_returns_is_kept_exactly(values: list[tuple[Any, Any]]) -> None:
    from resultlog.chords.entries import member_entry

    texts = [write(value) for value, write in values]
    for text in texts:  # the producer's text, as it wrote it
        assert member_entry(State.SUCCESS, "t", text, None, 1, max_bytes=ENTRY_BYTES)[2] == text
    n = len(texts)
    [c] = run([declared(n)] + [with_result(member(i, n), text) for i, text in enumerate(texts)])[0]
    assert c.state is State.SUCCESS and c.result_values() == [value for value, _ in values]


def _not_one_value(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return True
    return False


# Texts that are not one JSON value: any text json refuses, two values in a row, and a
# value cut short.
not_json = (
    st.text(max_size=30).filter(_not_one_value)
    | st.builds(lambda a, b, sep: json.dumps(a) + sep + json.dumps(b), json_values, json_values,
                st.sampled_from([",", " ", "", "]["]))
      .filter(_not_one_value)
    | st.builds(lambda v, cut: json.dumps(v)[:cut], json_values, st.integers(0, 40)).filter(_not_one_value)
)


@hsettings(max_examples=300)
@given(not_json)
def test_any_text_that_is_not_one_json_value_fails_the_member(text: str) -> None:
    from resultlog.chords.entries import member_entry

    entry = member_entry(State.SUCCESS, "t", text, None, 1, max_bytes=ENTRY_BYTES)
    assert entry[:4] == [State.FAILURE.value, "t", None, "ResultNotSerializable"]
    [c] = run([declared(2), member(0, 2), with_result(member(1, 2), text)])[0]
    assert c.state is State.FAILURE and c.failed_member is not None and c.failed_member.index == 1


@pytest.mark.parametrize("results", ["[1,2]]", "[" + "9" * 5000 + "]", "[" * DEEPER_THAN_JSON_READS + "]" * DEEPER_THAN_JSON_READS, '{"a":1}'])
def test_a_completions_results_that_do_not_read_back_are_a_codec_error_naming_the_chord(results: str) -> None:
    """What a completion written before the aggregator checked its members' results may
    hold: a CorruptResult (a CodecError) naming the chord, rather than a JSONDecodeError, a ValueError or a
    RecursionError from deep within a hook or ChordResult.get()."""
    from resultlog.chords.store import ChordView
    from resultlog.views import ResultBackend

    done = ChordCompleted(completion_event_id(CHORD), CHORD, State.SUCCESS, 2, 2, 0, 5, results=results)
    with pytest.raises(CorruptResult, match=f"chord {CHORD}'s stored results are not"):
        done.result_values()
    chord = ResultBackend(Settings()).ChordResult(CHORD)
    chord._view = ChordView(CHORD, "SUCCESS", 2, 2, 0, results=results)  # read: no Redis
    with pytest.raises(CorruptResult, match=f"chord {CHORD}'s stored results are not"):
        chord.get()


# Any text, and long runs of what JSON escapes most (hypothesis rarely draws long text).
texts = st.text(st.characters(codec="utf-8"), max_size=50) | st.builds(
    lambda piece, times: piece * times, st.text("\x01\x1f\"\\é\U0001f600a", max_size=4), st.integers(0, 600))


@hsettings(max_examples=300)
@given(st.sampled_from([State.SUCCESS, State.FAILURE, State.REVOKED]), texts | st.none(),
       st.builds(ExceptionInfo, texts, texts, texts) | st.none(), st.integers(0, 2**31 - 1) | st.none(),
       st.integers(1200, 6000))
def test_a_member_entry_always_fits_and_is_kept_whole_when_it_can(
    state: State, result: str | None, exc: ExceptionInfo | None, index: int | None, max_bytes: int,
) -> None:
    from resultlog.chords.changelog import encode_value
    from resultlog.chords.entries import member_entry

    whole = member_entry(state, "t" * 255, result, exc, 1_700_000_000_000, index, max_bytes=10**9)
    fitted = member_entry(state, "t" * 255, result, exc, 1_700_000_000_000, index, max_bytes=max_bytes)
    assert len(encode_value(fitted)) <= max_bytes
    if len(encode_value(whole)) <= max_bytes:
        assert fitted == whole
    else:  # cut, or failing with EventTooLarge: never a success without its result
        assert fitted[0] != State.SUCCESS.value and fitted[2] is None


# --- the Redis hash layout ---------------------------------------------------------------


def test_the_completion_fields_read_back_as_the_view() -> None:
    failed = ChordCompleted(
        completion_event_id(CHORD), CHORD, State.FAILURE, 3, 2, 1, 5,
        failed_member=FailedMember("t1", 1, State.REVOKED, None))
    view = chord_view_from_hash(CHORD, completion_fields(failed))
    assert (view.state, view.size, view.done, view.failed, view.ready) == ("FAILURE", 3, 2, 1, True)
    assert view.failed_member == failed.failed_member and view.completion_id == failed.event_id
    assert chord_view_from_hash(CHORD, {}).state == "PENDING"
    assert chord_view_from_hash(CHORD, {b"state": b"STARTED", b"done": b"4", b"failed": b"1"}).succeeded == 3


def test_completed_summaries_are_removed_a_ttl_later_only_from_their_own_partition() -> None:
    from resultlog.chords.fold import summary_key
    from resultlog.chords.retention import SummaryRetention
    from resultlog.producers.partitioner import partition_for

    partitions, ttl = 8, 1000
    ids = [f"chord-{i}" for i in range(40)]
    part = {c: partition_for(c.encode(), partitions) for c in ids}
    p = part[ids[0]]
    same = [c for c in ids if part[c] == p][:3]
    other = next(c for c in ids if part[c] != p)
    records: list[Record] = []
    for k, chord_id in enumerate(same + [other]):
        records += [declared(1, chord_id=chord_id, ts=10_000 * k), member(0, 1, chord_id=chord_id, ts=10_000 * k)]
    records.append(declared(5, chord_id="open"))  # never completes: never removed
    completions, table = run(records)
    assert len(completions) == 4

    retention = SummaryRetention(table, ttl, partitions, per_sweep=2)
    # Indexed from the table, as after a restart; due at completion (log time) + TTL.
    due_first = completions[0].timestamp + ttl
    assert retention.sweep(p, due_first - 1) == []
    assert retention.sweep(p, due_first) == [same[0]]
    assert retention.sweep(p, 10**15) == same[1:3]  # at most per_sweep at a time
    assert retention.sweep(p, 10**15) == []
    assert [k for k in table if k.startswith("c:")] == [summary_key(other), summary_key("open")]
    # The other partition's summary goes only when that partition is swept.
    assert retention.sweep(part[other], 10**15) == [other]
    assert list(table) == [summary_key("open")]

    # A retention of 0 (results never expire) keeps everything.
    _, kept = run(records)
    assert SummaryRetention(kept, 0, partitions).sweep(p, 10**15) == []
    assert len([k for k in kept if k.startswith("c:")]) == 5


def test_a_declaration_too_large_for_the_changelog_is_refused_before_anything_is_written() -> None:
    """Callback kwargs of raw control characters (no JSON writer leaves them raw) take 6
    bytes a byte in the summary: within the event limit, over the record limit, a write
    the changelog refused for ever. The declaration is refused (the aggregator
    dead-letters it); one written as JSON text near the event limit fits."""
    forged = declared(1)
    object.__setattr__(forged, "callback_kwargs", "\x01" * (ENTRY_BYTES // 5))
    table: dict[str, Any] = {}
    with pytest.raises(ValidationError, match=f"chord {CHORD}: its declaration takes .* over its {ENTRY_BYTES}-byte limit"):
        run([forged], table)
    assert table == {}
    # 0.8 MB in the event (2 bytes a character), 2.4 MB escaped (\u00e9): the most JSON takes.
    as_json = ChordDeclared.create(CHORD, 1, callback="tasks.sum", callback_kwargs={"k": "é" * 400_000})
    assert len(as_json.encode(Codec())) < Settings().max_event_bytes
    completions, _ = run([as_json, member(0, 1)], table)
    assert [c.callback_kwargs for c in completions] == [as_json.callback_kwargs]
