"""Celery chords on the resultlog backend, with a real prefork worker and a real processor
started with the Celery app (``resultlog process --celery-app``): the processor fires
each chord's body once, from the log; no ``celery.chord_unlock`` task, no counters."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from resultlog.settings import Settings
from tests.integration.celery_app import TaskBroke, make_app, side_channel
from tests.integration.processes import ProcessorProcess
from tests.integration.test_celery_backend import BROKER_DB, ROOT, WAIT_S, Worker, backend_url

celery = pytest.importorskip("celery")
from celery import chord, group  # type: ignore[import-untyped]  # noqa: E402
from celery.exceptions import ChordError  # type: ignore[import-untyped]  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CELERY_APP = "tests.integration.celery_app:app"
DOC = ROOT / "docs" / "celery.md"
_EXAMPLE = re.compile(r"<!-- run by tests/integration/test_celery_chords.py[^>]*-->\n```python\n(.*?)```", re.S)


class ChordStack:
    """A processor firing bodies with the test's Celery app, a worker and a client app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.queue = f"rl-chord-{uuid.uuid4().hex[:10]}"
        self.broker = settings.redis_url.rsplit("/", 1)[0] + f"/{BROKER_DB}"
        # The processor's Celery app is the worker's: same broker, same queue.
        env = {"CELERY_BROKER_URL": self.broker, "CELERY_TEST_QUEUE": self.queue,
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.processor = ProcessorProcess(settings, "--celery-app", CELERY_APP, env=env).start()
        self.worker = Worker(settings, self.broker, self.queue)
        self.app = make_app(backend_url(settings), self.broker, self.queue)
        self.redis = redis.Redis.from_url(settings.redis_url)

    def task(self, name: str) -> Any:
        return self.app.tasks[name]

    def counter(self, name: str) -> tuple[str, Any]:
        """A Redis key a task increments, and a reader of it."""
        key = side_channel(self.settings, f"{name}-{uuid.uuid4().hex}")
        return key, lambda: int(self.redis.get(key) or 0)

    def wait_until(self, condition: Any, timeout: float = WAIT_S) -> None:
        """Until ``condition()`` holds, checked every 50 ms (BLPOP on a key nobody
        pushes to is the pause); fails after ``timeout`` seconds."""
        for _ in range(int(timeout / 0.05)):
            if condition():
                return
            self.redis.blpop([side_channel(self.settings, "never")], timeout=0.05)
        assert condition()

    def close(self) -> None:
        self.worker.stop()
        self.processor.stop()
        # Captured by pytest: shown only if the test failed.
        print(f"--- worker output ---\n{self.worker.output()[-20_000:]}")
        print(f"--- processor output ---\n{self.processor.output()[-20_000:]}")
        self.worker.log.unlink(missing_ok=True)
        self.processor.log.unlink(missing_ok=True)
        self.redis.close()
        broker = redis.Redis.from_url(self.broker)
        try:
            broker.delete(self.queue, f"_kombu.binding.{self.queue}")
        finally:
            broker.close()


@pytest.fixture
def stack(settings: Settings) -> Iterator[ChordStack]:
    s = ChordStack(settings)
    try:
        yield s
    finally:
        s.close()


def test_a_chord_of_1000_members_fires_its_body_once_with_results_in_order(stack: ChordStack) -> None:
    add, collect = stack.task("t.add"), stack.task("t.collect")
    runs, read_runs = stack.counter("body-runs")
    result = chord([add.s(i, i) for i in range(1000)], app=stack.app)(collect.s(runs))
    assert result.get(timeout=120) == [2 * i for i in range(1000)]
    assert read_runs() == 1
    # Its parent is a header task, as when the worker running the last one sends it.
    meta = stack.app.backend.get_task_meta(result.id, cache=False)
    assert meta.get("parent_id") in {r.id for r in result.parent.results}, meta
    # The chord view shows the aggregator's outcome too.
    assert "celery.chord_unlock" not in stack.worker.output()
    # A second chord right after: nothing of the first one leaks into it.
    again = chord([add.s(i, 1) for i in range(3)], app=stack.app)(collect.s(runs))
    assert again.get(timeout=WAIT_S) == [1, 2, 3]
    assert read_runs() == 2


def test_a_failing_member_fails_the_body_with_chord_error_and_runs_its_errback_once(
    stack: ChordStack,
) -> None:
    add, fail, collect, incr = (stack.task(n) for n in ("t.add", "t.fail", "t.collect", "t.incr"))
    runs, read_runs = stack.counter("body-runs")
    errbacks, read_errbacks = stack.counter("errbacks")
    header = [add.s(1, 1), fail.s("member broke"), add.s(2, 2)]
    result = chord(header, app=stack.app)(collect.s(runs).on_error(incr.si(errbacks)))
    # The body's own outcome (get() with propagate raises the header's error first,
    # the member's TaskBroke, as with any Celery backend).
    error = result.get(timeout=WAIT_S, propagate=False)
    assert isinstance(error, ChordError) and "member broke" in str(error), error
    assert "TaskBroke" in str(error) and result.state == "FAILURE"
    with pytest.raises((ChordError, TaskBroke)):
        result.get(timeout=WAIT_S)
    # The errback is a task: wait for it on a condition, then check it ran once.
    stack.redis.blpop([side_channel(stack.settings, "never")], timeout=0.01)
    for _ in range(600):
        if read_errbacks() >= 1:
            break
        stack.redis.blpop([side_channel(stack.settings, "never")], timeout=0.1)
    assert read_errbacks() == 1 and read_runs() == 0


def test_a_nested_chord_a_group_in_the_header_and_the_docs_example(stack: ChordStack) -> None:
    add, total, echo = stack.task("t.add"), stack.task("t.total"), stack.task("t.echo")
    inner = chord([add.s(1, 1), add.s(2, 2)], total.s())  # 6
    result = chord([add.s(0, 1), inner, add.s(5, 5)], app=stack.app)(echo.s())
    assert result.get(timeout=WAIT_S) == [1, 6, 10]
    # A group in the header: Celery unrolls it into the header (its tasks restart at
    # index 0), so its results come flat, ordered by index then task id, as with
    # Celery's Redis backend.
    nested = chord([add.s(1, 1), group(add.s(2, 2), add.s(3, 3))], app=stack.app)(echo.s())
    got = nested.get(timeout=WAIT_S)
    assert sorted(got) == [2, 4, 6]
    # docs/celery.md's example, as written (on the same stack: a stack costs seconds).
    (example,) = _EXAMPLE.findall(DOC.read_text())
    exec(compile(example, str(DOC), "exec"), {  # noqa: S102 — our own documentation
        "add": add, "tsum": total, "fail": stack.task("t.fail")})


def test_a_frozen_chord_applied_again_runs_again_and_a_failure_reaches_a_chained_group(
    stack: ChordStack,
) -> None:
    add, fail, collect = stack.task("t.add"), stack.task("t.fail"), stack.task("t.collect")
    runs, read_runs = stack.counter("body-runs")
    # A frozen chord keeps its group id (and its members' ids): each apply is a run.
    frozen = chord([add.s(1, 2), add.s(3, 4)], collect.s(runs), app=stack.app)
    frozen.freeze()
    assert frozen.apply_async().get(timeout=WAIT_S) == [3, 7]
    # The second run's body has the first one's task id: its result is there already,
    # so the run is seen in the body's own counter.
    frozen.apply_async()
    stack.wait_until(lambda: read_runs() >= 2)
    assert read_runs() == 2
    # A group chained after a failing task never runs; its members get the failure
    # (with Celery's Redis backend they wait forever: celery#6437), and the exception
    # comes back with all its args, as Celery rebuilds it: cls(*args).
    chained = (fail.si("broke", 7) | group(add.s(1), add.s(2))).apply_async()
    with pytest.raises(TaskBroke) as raised:
        chained.get(timeout=WAIT_S)
    assert raised.value.args == ("broke", 7)
    # Every member, not only the first get() raised for.
    outcomes = chained.join(timeout=WAIT_S, propagate=False)
    assert [type(o) for o in outcomes] == [TaskBroke, TaskBroke]
    assert [r.state for r in chained.results] == ["FAILURE", "FAILURE"]


def test_members_that_finish_before_the_size_is_recorded_still_count(stack: ChordStack) -> None:
    """Celery records the size just before it sends the last header task: a lazy header
    lets the first members finish before that."""
    add, collect = stack.task("t.add"), stack.task("t.collect")
    runs, read_runs = stack.counter("body-runs")
    ids = [uuid.uuid4().hex for _ in range(6)]

    def header() -> Iterator[Any]:
        for i, task_id in enumerate(ids):
            yield add.s(i, 100).set(task_id=task_id)
        # Celery reads ahead (it must see that the last one is last), and records the
        # size once this returns: the first members sent finish before that.
        for task_id in ids[:2]:
            stack.app.AsyncResult(task_id).get(timeout=WAIT_S)

    result = chord(header(), app=stack.app)(collect.s(runs))
    assert result.get(timeout=WAIT_S) == [100 + i for i in range(6)]
    assert read_runs() == 1


def test_a_processor_killed_mid_chord_fires_the_body_once(stack: ChordStack) -> None:
    add, gated, collect = stack.task("t.add"), stack.task("t.gated"), stack.task("t.collect")
    runs, read_runs = stack.counter("body-runs")
    gate = side_channel(stack.settings, f"gate-{uuid.uuid4().hex}")
    header = [add.s(i, 0) for i in range(20)] + [gated.s(20 + i, gate) for i in range(20)]
    result = chord(header, app=stack.app)(collect.s(runs))
    chord_id = result.parent.id
    from resultlog.views import ResultBackend

    with ResultBackend(stack.settings) as backend:
        progress = backend.ChordResult(chord_id)
        for _ in range(6000):
            if progress.view.done >= 20:
                break
            stack.redis.blpop([side_channel(stack.settings, "never")], timeout=0.01)
        assert progress.view.done >= 20, progress.view
    stack.processor.kill()
    stack.redis.rpush(gate, *["go"] * 10)  # half the rest finish while it is down
    stack.processor.start()
    stack.redis.rpush(gate, *["go"] * 10)
    assert result.get(timeout=WAIT_S) == list(range(40))
    assert read_runs() == 1

