"""The fold: a task's events -> its latest view, as a pure function.

This module is the specification that the Redis script (``views/fold.lua``) and the
replay verifier implement and are tested against.

Rule (a join in a product of max-lattices, hence commutative, associative and
idempotent — any order and any duplication of events fold to the same view):

- The *winner* is the event with the greatest :func:`order_key`; the view's state,
  outcome fields (result, exception, traceback, runtime, eta), worker, attempt and
  timestamp come from it.
- *Sticky* fields (task name, args, kwargs, lineage, chord membership, meta) are taken,
  each on its own, from the greatest-keyed event that carries a non-null value, because
  a SUCCESS event need not repeat the args its RECEIVED event already recorded. The
  meta map is one value (:func:`~resultlog.schemas.event.meta_text`): the whole map of
  the greatest-keyed event carrying a non-empty one, never a merge.
- *Expiry* follows the winner (:func:`expire_at`): its timestamp plus its own
  ``result_ttl_ms``, or plus the folding process's TTL when it carries none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from resultlog.schemas.event import ExceptionInfo, TaskEvent, meta_text
from resultlog.schemas.states import State

WINNER_FIELDS = (
    "state", "event_id", "timestamp", "attempt", "worker",
    "result", "exception", "traceback", "runtime", "eta",
)
STICKY_FIELDS = (
    "task_name", "args", "kwargs", "parent_id", "root_id", "group_id",
    "chord_id", "chord_size", "chord_index", "meta",
)


@dataclass(frozen=True, slots=True)
class TaskView:
    """The latest known state of one task, as the views hold it."""

    task_id: str
    token: str  # order_token of the winner
    state: State
    event_id: str
    timestamp: int
    attempt: int = 0
    worker: str | None = None
    result: str | None = None
    exception: ExceptionInfo | None = None
    traceback: str | None = None
    runtime: float | None = None
    eta: int | None = None
    task_name: str | None = None
    args: str | None = None
    kwargs: str | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    chord_id: str | None = None
    chord_size: int | None = None
    chord_index: int | None = None
    meta: str | None = None  # JSON object text (meta_text), None when no event had one
    # The winner's own result TTL (TaskEvent.result_ttl_ms), for expire_at: not content,
    # nor compared (the Redis view keeps the expiry as its key's, so a view read from
    # Redis has None here).
    result_ttl_ms: int | None = field(default=None, compare=False)
    # order token of the event each sticky field came from
    sticky_tokens: tuple[tuple[str, str], ...] = ()

    @property
    def ready(self) -> bool:
        return self.state.ready

    def public(self) -> dict[str, Any]:
        """The view's content without bookkeeping (what two views must agree on)."""
        public = {n: getattr(self, n) for n in ("task_id", *WINNER_FIELDS, *STICKY_FIELDS)}
        exc = self.exception
        public.update(state=self.state.value,
                      exception=None if exc is None else (exc.type, exc.module, exc.message),
                      # A mapping, whatever its text's key order: the history keeps meta
                      # as jsonb, which orders keys its own way, so a view folded from
                      # the history (verify --source history) has the same pairs in
                      # another order.
                      meta=None if self.meta is None else json.loads(self.meta))
        return public


def visible(view: TaskView | None) -> TaskView | None:
    """What a reader is shown of ``view``: nothing for a forgotten task (the view keeps
    the FORGOTTEN winner as a tombstone, so that no late event brings the result back)."""
    return None if view is None or view.state is State.FORGOTTEN else view


def sticky_value(event: TaskEvent, name: str) -> Any:
    """The value ``event`` offers for the sticky field ``name`` (None: none)."""
    if name == "meta":
        return meta_text(event.meta)
    return getattr(event, name)


def apply(view: TaskView | None, event: TaskEvent) -> TaskView:
    """``view`` joined with ``event``."""
    token = event.token
    if view is None:
        values = {n: sticky_value(event, n) for n in STICKY_FIELDS}
        sticky = tuple(sorted((n, token) for n, v in values.items() if v is not None))
        return TaskView(
            task_id=event.task_id, token=token,
            **{n: getattr(event, n) for n in WINNER_FIELDS},
            **values,
            result_ttl_ms=event.result_ttl_ms,
            sticky_tokens=sticky,
        )
    changes: dict[str, Any] = {}
    if token > view.token:
        changes["token"] = token
        changes["result_ttl_ms"] = event.result_ttl_ms
        for name in WINNER_FIELDS:
            changes[name] = getattr(event, name)
    tokens = dict(view.sticky_tokens)
    for name in STICKY_FIELDS:
        value = sticky_value(event, name)
        if value is not None and token > tokens.get(name, ""):
            changes[name] = value
            tokens[name] = token
    if not changes:
        return view
    changes["sticky_tokens"] = tuple(sorted(tokens.items()))
    return replace(view, **changes)


def expire_at(view: TaskView, ttl_ms: int) -> int | None:
    """When the views drop ``view`` (ms since the epoch; None: never): the winner's
    timestamp plus its own TTL, or plus ``ttl_ms`` (the folding process's
    ``result_ttl_s``; 0: never) when it carries none. ``fold.lua`` PEXPIREATs what
    ``schemas/taskrows.py`` computes by this rule."""
    own = view.result_ttl_ms
    ttl = ttl_ms if own is None else own
    return view.timestamp + ttl if ttl else None


def expired(view: TaskView, ttl_ms: int, now_ms: int) -> bool:
    """Whether the views have dropped ``view`` by ``now_ms`` (:func:`expire_at`)."""
    at = expire_at(view, ttl_ms)
    return at is not None and at <= now_ms


def fold(events: Iterable[TaskEvent]) -> dict[str, TaskView]:
    """The latest view of every task in ``events``."""
    views: dict[str, TaskView] = {}
    for event in events:
        views[event.task_id] = apply(views.get(event.task_id), event)
    return views
