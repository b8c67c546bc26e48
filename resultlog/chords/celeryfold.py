"""Celery's chord protocol folded into the chord aggregator's table: its progress and its
one completion. Pure (no I/O); :class:`~resultlog.chords.fold.ChordFold` hands it every
:class:`~resultlog.chords.celeryrecords.CeleryChordRecord`.

Celery's rules, as its Redis backend keeps them (``on_chord_part_return``): a member is
its task id *and* its index, counted once; the chord is complete when the members
returned number the size (which may come after members) plus the tasks added; the body
gets the results ordered by index, then task id. Applying a frozen chord again after it
completed is a new run, begun at its ``start`` record (a ``start`` while a run is open
changes nothing). One limit: a processor that crashes after a new run began, with
members of the previous run not yet committed as read, reads them again as the new
run's; the body still fires once per run. Unlike Celery's Redis backend, a failed or
revoked member fails the chord at once, as resultlog's own chords do.

Table keys (beside the ``c:``/``m:`` keys of resultlog's own chords):

- ``c:<chord_id>``: the summary ``{"celery": true, "size", "adds" (add records
  counted), "done", "fail_seq", "ts", "completed", "run" (runs begun before this one:
  each run's completion has its own event id), "starts" (the latest start records'
  ids, so one read again after a crash begins no run)}``;
- ``p:<chord_id>:<seq>``: the ``seq``-th member returned, ``[state, task_id, result,
  exc_type, exc_module, exc_message, timestamp, index]`` (resultlog/chords/entries.py);
- ``q:<chord_id>:<index>:<task_id>``: that member's ``seq`` (seen already?);
- ``a:<chord_id>:<seq>``: the event id of the ``seq``-th add record counted;
- ``r:<chord_id>:<event_id>``: that add record's ``seq`` (seen already?);
- ``b:<chord_id>``: the body's signature (JSON text), written once.

Adds are kept as members are, one small key each, not as a list in the summary: the
summary is rewritten at every record, so a list would make the changelog quadratic in
the adds, and with some 30,000 of them one summary over the changelog's record limit,
a write refused and retried for ever.

Crash safety is the aggregator's: after a crash the summary may lag its entries, and
the first member seen again recounts the chord from its ``p:`` entries; an add record
read again whose ``r:`` key is there raises the count to its ``seq`` + 1.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

from resultlog.chords.celeryrecords import ADD, PART, SIZE, START, CeleryChordRecord
from resultlog.chords.entries import (
    EXC_TYPE, INDEX, RESULT, STATE, TASK, TS, check_fits, member_entry)
from resultlog.chords.records import (
    ChordCompleted, ChordProgress, FailedMember, Step, completion_event_id, exception_info)
from resultlog.schemas.states import State
_LAST = float("inf")


def summary_key(chord_id: str) -> str:
    """The key of the summary of a chord of either kind (its ``"celery"`` field tells which)."""
    return f"c:{chord_id}"


def part_key(chord_id: str, seq: int) -> str:
    return f"p:{chord_id}:{seq}"


def seen_key(chord_id: str, index: int | None, task_id: str) -> str:
    return f"q:{chord_id}:{'' if index is None else index}:{task_id}"


def add_key(chord_id: str, seq: int) -> str:
    return f"a:{chord_id}:{seq}"


def add_seen_key(chord_id: str, event_id: str) -> str:
    return f"r:{chord_id}:{event_id}"


def body_key(chord_id: str) -> str:
    return f"b:{chord_id}"


def is_celery(summary: Any) -> bool:
    return isinstance(summary, dict) and bool(summary.get("celery"))


#: The start records a summary remembers, to know one read again after a crash: a crash
#: re-reads at most what followed the last committed offset, a few runs at most.
MAX_STARTS = 32


def _new_summary(run: int = 0) -> dict[str, Any]:
    return {"celery": True, "size": None, "adds": 0, "done": 0, "fail_seq": None, "ts": 0,
            "completed": None, "run": run, "starts": []}


def run_event_id(chord_id: str, run: int) -> str:
    """The completion event id of ``chord_id``'s run ``run`` (the first run's is the chord's)."""
    return completion_event_id(chord_id if run == 0 else f"{chord_id}#{run}")


class CeleryChordFold:
    """Celery chords over the aggregator's table (a changelog-backed table, or a dict)."""

    def __init__(self, table: MutableMapping[str, Any], max_entry_bytes: int) -> None:
        self.table = table
        self.max_entry_bytes = max_entry_bytes  # as in ChordFold
        self._verified: set[str] = set()  # as in ChordFold

    def apply(self, rec: CeleryChordRecord) -> Step:
        chord_id = rec.chord_id
        s = self._summary(chord_id)
        before = json.dumps(s, sort_keys=True)
        if rec.kind == START:
            if rec.event_id in s["starts"]:
                return Step(chord_id)  # read again (after a crash): not a new run
            if s["completed"] is not None:
                # A completed chord applied again: a new run. What the last run left (its
                # entries are dropped once its completion is out, unless a crash came
                # between) must not count in this one.
                self._drop_entries(chord_id, s)
                s = {**_new_summary(s["run"] + 1), "starts": s["starts"], "ts": rec.timestamp}
            s["starts"] = [*s["starts"], rec.event_id][-MAX_STARTS:]
            return self._settle(chord_id, s, before)
        if s["completed"] is not None:
            # A late member after a fail-fast completion, a re-read, or a size after the
            # chord failed early: the chord fired once and never fires again.
            return Step(chord_id)
        s["ts"] = max(s["ts"], rec.timestamp)
        if rec.kind == SIZE:
            s["size"] = rec.size
        elif rec.kind == ADD:
            self._add(chord_id, rec.event_id, s)
        elif rec.kind == PART:
            self._part(chord_id, rec, s)
        return self._settle(chord_id, s, before)

    def _part(self, chord_id: str, rec: CeleryChordRecord, s: dict[str, Any]) -> None:
        assert rec.task_id is not None and rec.state is not None
        if rec.body is not None and body_key(chord_id) not in self.table:
            check_fits("body", chord_id, rec.body, (rec.body,), self.max_entry_bytes)
            self.table[body_key(chord_id)] = rec.body
        seen = seen_key(chord_id, rec.index, rec.task_id)
        if seen in self.table:
            # A member returned again, or re-read after a crash whose entries reached
            # the changelog without the summary counting them: recount once per chord.
            if chord_id not in self._verified:
                self._verified.add(chord_id)
                self._recount(chord_id, s)
            return
        seq = s["done"]
        # The entries before the summary that counts them (see the module docstring).
        entry = member_entry(rec.state, rec.task_id, rec.result, rec.exception, rec.timestamp,
                             rec.index, max_bytes=self.max_entry_bytes)
        self.table[part_key(chord_id, seq)] = entry
        self.table[seen] = seq
        s["done"] = seq + 1
        if entry[STATE] != State.SUCCESS.value and s["fail_seq"] is None:
            s["fail_seq"] = seq

    def _add(self, chord_id: str, event_id: str, s: dict[str, Any]) -> None:
        seen = add_seen_key(chord_id, event_id)
        counted = self.table.get(seen)
        if counted is not None:
            # A repeat, or read again after a crash that kept its keys but not the summary
            # counting it: the keys of every earlier add came before that summary.
            s["adds"] = max(s["adds"], counted + 1)
            return
        seq = s["adds"]
        # The keys before the summary that counts them (see the module docstring).
        self.table[add_key(chord_id, seq)] = event_id
        self.table[seen] = seq
        s["adds"] = seq + 1

    def _recount(self, chord_id: str, s: dict[str, Any]) -> None:
        done, fail_seq = 0, None
        while (entry := self.table.get(part_key(chord_id, done))) is not None:
            # The crash may have kept an entry without its seen key (written next): it
            # is counted now, so the member must be known as seen, or it would be
            # counted again when it is read again.
            seen = seen_key(chord_id, entry[INDEX], entry[TASK])
            if seen not in self.table:
                self.table[seen] = done
            if entry[STATE] != State.SUCCESS.value and fail_seq is None:
                fail_seq = done
            s["ts"] = max(s["ts"], entry[TS])
            done += 1
        s.update(done=done, fail_seq=fail_seq)

    def _summary(self, chord_id: str) -> dict[str, Any]:
        found = self.table.get(summary_key(chord_id))
        if found is None or not is_celery(found):
            return _new_summary()
        # Summaries written before runs existed lack "run" and "starts".
        s = {**_new_summary(), **found}
        if isinstance(s["adds"], list):
            s = self._adds_as_keys(chord_id, s)
        return s

    def _adds_as_keys(self, chord_id: str, s: dict[str, Any]) -> dict[str, Any]:
        """A summary written when adds were a list of ids, with them as keys (once)."""
        ids: list[str] = s["adds"]
        s = {**s, "adds": 0}
        for event_id in ids:
            self._add(chord_id, event_id, s)
        self.table[summary_key(chord_id)] = s
        return s

    def _settle(self, chord_id: str, s: dict[str, Any], before: str) -> Step:
        completion = self._completion(chord_id, s)
        body = parent = None
        if completion is not None:
            body = self.table.get(body_key(chord_id))
            last = self.table.get(part_key(chord_id, s["done"] - 1)) if s["done"] else None
            parent = None if last is None else last[TASK]
        if json.dumps(s, sort_keys=True) == before:
            return Step(chord_id, None, completion, body, parent)
        self.table[summary_key(chord_id)] = s
        total = self._total(s)
        progress = ChordProgress(s["done"] if total is None else total, s["done"],
                            0 if s["fail_seq"] is None else 1, s["ts"])
        return Step(chord_id, progress, completion, body, parent)

    @staticmethod
    def _total(s: dict[str, Any]) -> int | None:
        return None if s["size"] is None else s["size"] + s["adds"]

    def _completion(self, chord_id: str, s: dict[str, Any]) -> ChordCompleted | None:
        if s["completed"] is not None or body_key(chord_id) not in self.table:
            return None
        total = self._total(s)
        if s["fail_seq"] is not None:
            entry = self.table[part_key(chord_id, s["fail_seq"])]
            exc = exception_info(*entry[EXC_TYPE:TS])
            index = entry[INDEX] if entry[INDEX] is not None else s["fail_seq"]
            return ChordCompleted(
                event_id=run_event_id(chord_id, s["run"]), chord_id=chord_id, state=State.FAILURE,
                size=total or s["done"], done=s["done"], failed=1, timestamp=s["ts"],
                failed_member=FailedMember(entry[TASK], index, State(entry[STATE]), exc))
        if total is None or s["done"] < total:
            return None
        entries = [self.table[part_key(chord_id, i)] for i in range(s["done"])]
        entries.sort(key=lambda e: (_LAST if e[INDEX] is None else e[INDEX], e[TASK]))
        # Spliced as text, never decoded and encoded again: each SUCCESS entry's result is
        # exactly one JSON value (member_entry records any other as the member failing).
        results = "[" + ",".join("null" if e[RESULT] is None else e[RESULT] for e in entries) + "]"
        return ChordCompleted(
            event_id=run_event_id(chord_id, s["run"]), chord_id=chord_id, state=State.SUCCESS,
            size=total, done=s["done"], failed=0, timestamp=s["ts"], results=results)

    def completed(self, completion: ChordCompleted) -> None:
        """``completion`` is out (and its body fired): mark it, drop the members' entries."""
        chord_id = completion.chord_id
        s: dict[str, Any] = dict(self.table[summary_key(chord_id)])
        s["completed"] = completion.state.value
        self.table[summary_key(chord_id)] = s  # the mark first, as in ChordFold
        self._drop_entries(chord_id, s)

    def _drop_entries(self, chord_id: str, s: dict[str, Any]) -> None:
        """The entries and keys of the members and adds ``s`` counted (and the body)."""
        for seq in range(s["adds"]):
            event_id = self.table.get(add_key(chord_id, seq))
            if event_id is None:
                continue
            if add_seen_key(chord_id, event_id) in self.table:
                del self.table[add_seen_key(chord_id, event_id)]
            del self.table[add_key(chord_id, seq)]
        for seq in range(s["done"]):
            entry = self.table.get(part_key(chord_id, seq))
            if entry is None:
                continue
            seen = seen_key(chord_id, entry[INDEX], entry[TASK])
            if seen in self.table:
                del self.table[seen]
            del self.table[part_key(chord_id, seq)]
        self._verified.discard(chord_id)
        if body_key(chord_id) in self.table:
            del self.table[body_key(chord_id)]
