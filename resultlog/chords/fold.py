"""The chord state machine: a chord's records -> its progress and its one completion.

Pure (no I/O): the aggregator runs it over a changelog-backed table per partition, replay
over a dict, the unit tests over both. Table layout: docs/chords.md, "How it works"; the
order of writes that makes it crash-safe: the aggregator's module docstring.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

from resultlog.errors import CodecError
from resultlog.chords.celeryfold import CeleryChordFold, is_celery, summary_key
from resultlog.chords.celeryrecords import CeleryChordRecord
from resultlog.chords.entries import EXC_TYPE, RESULT, STATE, TASK, TS, check_fits, member_entry
from resultlog.chords.records import (
    ChordCompleted, ChordDeclared, ChordProgress, FailedMember, Step, completion_event_id,
    exception_info)
from resultlog.schemas.codec import CELERY_CHORD, CHORD_DECLARED, TASK_EVENT, event_from_record
from resultlog.schemas.event import TaskEvent
from resultlog.schemas.states import State

log = logging.getLogger("resultlog.chords")

_MEMBER_PREFIX = "m:"


def member_key(chord_id: str, index: int) -> str:
    return f"{_MEMBER_PREFIX}{chord_id}:{index}"


def _member_indexes(table: Mapping[str, Any]) -> dict[str, set[int]]:
    """Each chord's member indexes with an entry in ``table``, from its keys."""
    present: dict[str, set[int]] = {}
    for key in table:
        if key.startswith(_MEMBER_PREFIX):
            chord_id, _, index = key[len(_MEMBER_PREFIX):].rpartition(":")
            present.setdefault(chord_id, set()).add(int(index))
    return present


def _new_summary() -> dict[str, Any]:
    return {"n": 0, "declared": False, "wait_all": False, "callback": None, "kwargs": None,
            "done": 0, "failed": 0, "fail_index": None, "ts": 0, "completed": None}


class ChordFold:
    """The chord state machine over ``table`` (see the module docstring).

    For a given set of records, any order and any duplication yields the same SUCCESS
    completion, and a chord completes exactly once: the caller publishes the completion
    a step returns, then calls :meth:`completed`.
    """

    def __init__(self, table: MutableMapping[str, Any], max_entry_bytes: int) -> None:
        """``max_entry_bytes``: the largest encoded value ``table`` may hold (see
        :func:`~resultlog.chords.entries.member_entry`); a dict holds what a changelog would."""
        self.table = table
        self.max_entry_bytes = max_entry_bytes
        # Chords recounted by this fold, in memory only: a partition loaded afresh after
        # a rebalance gets a new fold, which verifies again.
        self._verified: set[str] = set()
        # The indexes of each chord's entries, in memory only (rebuilt from the table's
        # keys): every walk over a chord's members visits those present, never its
        # declared size, which may be 2**31 - 1 with one member in.
        self._present = _member_indexes(table)
        self.celery = CeleryChordFold(table, max_entry_bytes)

    def apply(self, name: str, record: Mapping[str, Any]) -> Step | None:
        """Fold one decoded record from the chords topic (CodecError for other kinds)."""
        if name == TASK_EVENT:
            return self.member(event_from_record(record))
        if name == CHORD_DECLARED:
            return self.declare(ChordDeclared.from_record(record))
        if name == CELERY_CHORD:
            return self.celery.apply(CeleryChordRecord.from_record(record))
        raise CodecError(f"unexpected record type {name} in the chords topic")

    def declare(self, decl: ChordDeclared) -> Step:
        s = self._summary(decl.chord_id)
        before = dict(s)
        if s["completed"] is not None:
            return Step(decl.chord_id)
        if not s["declared"]:  # else: the first declaration wins
            shrinks = s["n"] > decl.size
            s.update(declared=True, n=decl.size, wait_all=decl.wait_all, callback=decl.callback,
                     kwargs=decl.callback_kwargs, ts=max(s["ts"], decl.timestamp))
            check_fits("declaration", decl.chord_id, s, (decl.callback, decl.callback_kwargs),
                       self.max_entry_bytes)
            if shrinks:
                log.warning("chord %s declared with %d members, but members said up to %d; "
                            "members beyond the declared size are ignored", decl.chord_id, decl.size, before["n"])
                self._recount(decl.chord_id, s)
        return self._settle(decl.chord_id, s, before)

    def member(self, event: TaskEvent) -> Step | None:
        chord_id, index = event.chord_id, event.chord_index
        if chord_id is None or index is None or event.chord_size is None or not event.state.ready:
            return None
        s = self._summary(chord_id)
        before = dict(s)
        if s["completed"] is not None:
            return Step(chord_id)  # a re-delivery after the outcome: never fires again
        if s["declared"] and index >= s["n"]:
            log.warning("chord %s has %d members; ignoring task %s with index %d",
                        chord_id, s["n"], event.task_id, index)
            return Step(chord_id)
        if not s["declared"]:
            s["n"] = max(s["n"], event.chord_size)
        mkey = member_key(chord_id, index)
        if mkey in self.table:
            # A duplicate, or a record re-read after a crash whose entry reached the
            # changelog without the summary counting it: recount once per chord.
            if chord_id not in self._verified:
                self._verified.add(chord_id)
                if self._recount(chord_id, s):
                    log.info("chord %s: counts repaired from its members' entries", chord_id)
            return self._settle(chord_id, s, before)
        # The entry before the summary that counts it (see the module docstring).
        entry = member_entry(event.state, event.task_id, event.result, event.exception,
                             event.timestamp, max_bytes=self.max_entry_bytes)
        self.table[mkey] = entry
        self._present.setdefault(chord_id, set()).add(index)
        s["done"] += 1
        if entry[STATE] != State.SUCCESS.value:
            s["failed"] += 1
            s["fail_index"] = index if s["fail_index"] is None else min(s["fail_index"], index)
        s["ts"] = max(s["ts"], event.timestamp)
        return self._settle(chord_id, s, before)

    def completed(self, completion: ChordCompleted) -> None:
        """Record that ``completion`` is published; drop the members' entries."""
        key = summary_key(completion.chord_id)
        if is_celery(self.table.get(key)):
            self.celery.completed(completion)
            return
        s = dict(self.table[key])
        s["completed"] = completion.state.value
        # The mark first: a deletion in the changelog then implies the mark is there.
        self.table[key] = s
        self._verified.discard(completion.chord_id)
        # Those beyond a declared size that shrank too: nothing reads them any more.
        for i in sorted(self._present.pop(completion.chord_id, ())):
            del self.table[member_key(completion.chord_id, i)]

    def _summary(self, chord_id: str) -> dict[str, Any]:
        # A copy: a table writes a change to its changelog only when a value is assigned.
        return dict(self.table.get(summary_key(chord_id)) or _new_summary())

    def _settle(self, chord_id: str, s: dict[str, Any], before: dict[str, Any]) -> Step:
        """Write the summary if it changed; the completion if the chord is now complete.

        Also for records that changed nothing: after a crash the summary can say
        complete while the completion was never published (or its mark was lost), and
        any record of the chord then publishes it (again, with the same event_id).
        """
        completion = self._completion(chord_id, s)  # may recount, so before the write
        if s == before:
            return Step(chord_id, None, completion)
        self.table[summary_key(chord_id)] = s
        return Step(chord_id, ChordProgress(s["n"], s["done"], s["failed"], s["ts"]), completion)

    def _recount(self, chord_id: str, s: dict[str, Any]) -> bool:
        """Counts from the members' entries; True if they differed from ``s``."""
        done = failed = 0
        fail_index: int | None = None
        ts = s["ts"]
        for i in self._indexes(chord_id, s):
            entry = self.table[member_key(chord_id, i)]
            done += 1
            ts = max(ts, entry[TS])
            if entry[STATE] != State.SUCCESS.value:
                failed += 1
                if fail_index is None:
                    fail_index = i
        changed = (done, failed, fail_index) != (s["done"], s["failed"], s["fail_index"])
        s.update(done=done, failed=failed, fail_index=fail_index, ts=ts)
        return changed

    def _indexes(self, chord_id: str, s: dict[str, Any]) -> list[int]:
        """The indexes of ``chord_id``'s entries that count (below its size), in order."""
        return sorted(i for i in self._present.get(chord_id, ()) if i < s["n"])

    def _completion(self, chord_id: str, s: dict[str, Any]) -> ChordCompleted | None:
        if s["completed"] is not None or not s["declared"]:
            return None
        if s["failed"] and not s["wait_all"]:
            return self._failure(chord_id, s)
        if s["done"] < s["n"]:
            return None
        indexes = self._indexes(chord_id, s)
        if len(indexes) < s["n"]:
            # Counted but not recorded: cannot happen in changelog order; repair anyway.
            self._recount(chord_id, s)
            return None
        if s["failed"]:
            return self._failure(chord_id, s)
        # Every index below the size has its entry (and no other counts): in index order.
        entries = [self.table[member_key(chord_id, i)] for i in indexes]
        # Spliced as text, never decoded and encoded again: each SUCCESS entry's result is
        # exactly one JSON value (member_entry records any other as the member failing).
        results = "[" + ",".join("null" if e[RESULT] is None else e[RESULT] for e in entries) + "]"
        return ChordCompleted(
            event_id=completion_event_id(chord_id), chord_id=chord_id, state=State.SUCCESS,
            size=s["n"], done=s["done"], failed=0, timestamp=s["ts"], results=results,
            callback=s["callback"], callback_kwargs=s["kwargs"])

    def _failure(self, chord_id: str, s: dict[str, Any]) -> ChordCompleted | None:
        index = s["fail_index"]
        entry = self.table.get(member_key(chord_id, index))
        if entry is None:
            self._recount(chord_id, s)
            return None
        exc = exception_info(*entry[EXC_TYPE:TS])
        member = FailedMember(entry[TASK], index, State(entry[STATE]), exc)
        return ChordCompleted(
            event_id=completion_event_id(chord_id), chord_id=chord_id, state=State.FAILURE,
            size=s["n"], done=s["done"], failed=s["failed"], timestamp=s["ts"],
            failed_member=member, callback=s["callback"], callback_kwargs=s["kwargs"])
