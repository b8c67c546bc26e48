"""A failure reaches the groups chained after the failed task.

When a task of a chain fails, Celery's backend marks the chain's later tasks failed
(``Backend.mark_as_failure``), so that whoever waits on the chain's result sees the
failure. It skips elements without a task id of their own: a group chained last
(``add.s() | fail.s() | group(...)``) is never marked, its members never run, and
``get()`` on the chain's GroupResult waits until it times out (celery#6437; Celery's
suite marks ``test_error_propagates_from_chord`` as failing with its Redis backend).
The members of such a group were given their task ids when the chain was frozen, so
this backend marks each of them with the failure, as Celery marks plain tasks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any


def unreached_group_members(chain: Any) -> Iterator[dict[str, Any]]:
    """The task signatures (Celery's JSON form) inside the groups of ``chain`` (a failed
    request's remaining chain), including groups in the bodies of chained chords."""
    try:
        todo: deque[Any] = deque(chain)
    except TypeError:  # a request's chain may be None or a placeholder
        return
    while todo:
        element = todo.popleft()
        if not isinstance(element, dict):
            continue
        kind = element.get("subtask_type")
        kwargs = element.get("kwargs") or {}
        if kind == "chord":
            body = kwargs.get("body")
            if body is not None:
                todo.append(body)
        elif kind == "group":
            for task in kwargs.get("tasks") or ():
                if not isinstance(task, dict):
                    continue
                if task.get("subtask_type") in ("group", "chord"):
                    todo.append(task)
                elif (task.get("options") or {}).get("task_id"):
                    yield task
