"""Firing a Celery chord's body from the processor, once its members are all in.

``resultlog process --celery-app proj.celery:app`` gives the chord aggregator the user's
Celery app; when a Celery chord completes the aggregator calls :meth:`BodyFirer.fire`,
before the chord is marked completed. What is sent, as Celery's Redis backend does in
``on_chord_part_return``: docs/celery.md, "Chords".

Once: a mark per completion in PostgreSQL (resultlog/chords/bodyfires.py) says firing
before the body is sent and fired after. A completion seen again whose mark says fired
is not fired again; one still firing is (the processor died in between and may or may
not have sent it): never a chord left hanging, at the price of a possible second send.
A processor that sent a body and could not mark it fired (PostgreSQL unavailable)
remembers the send, and only marks it when it tries again (until 1 Dec 2026 it found its
own firing mark and sent the body a second time). The marks were Redis keys until
1 Dec 2026: a Redis that restarted empty had lost them, and a body was sent again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import Any

from resultlog.chords.bodyfires import BodyFires
from resultlog.chords.records import ChordCompleted
from resultlog.errors import ConfigurationError
from resultlog.settings import Settings

log = logging.getLogger("resultlog.chords")


def load_celery_app(spec: str) -> Any:
    """The Celery app named ``module:attribute`` (or ``module``), as ``celery -A`` finds it."""
    try:
        from celery.app.utils import find_app  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ConfigurationError(
            "--celery-app needs Celery, which is not installed: pip install resultlog[celery]") from exc
    try:
        app = find_app(spec)
        # The app's task modules (include=, imports=), as a worker imports them: a body's
        # new-style errback is called here, so its task must be registered. And the app
        # made current, as in a worker: signatures and shared tasks that find their app
        # through Celery's current app (a group's, a chain's) must find this one, not a
        # default app with a default broker.
        app.loader.import_default_modules()
        app.set_current()
        app.set_default()
        return app
    except Exception as exc:  # noqa: BLE001 — importing raises whatever the app raises
        raise ConfigurationError(
            f"--celery-app {spec!r} cannot be loaded: {exc!r} (expected module:app, e.g. "
            "proj.celery:app, importable from the current directory)") from exc


class BodyFirer:
    """Fires the bodies of a Celery app's chords (see the module docstring); its marks'
    pool is opened by :meth:`start` (the aggregator's, when it starts)."""

    def __init__(self, settings: Settings, app: Any) -> None:
        self.settings = settings
        self.app = app
        self.claimant = f"{socket.gethostname()}:{os.getpid()}"
        self.marks = BodyFires(settings)
        # One token per completion for every attempt of its firing mark: a retry after a
        # commit whose answer was lost recognizes the mark as its own (not a processor
        # that died while firing).
        self._tokens: dict[str, str] = {}
        # Completions whose body this process sent and whose fired mark is not written
        # yet: a retry of fire() after that write failed (PostgreSQL unavailable) finds
        # only its own firing mark, which cannot say whether the body went; this can.
        self._sent: set[str] = set()

    async def start(self) -> None:
        """Open the marks' pool and bring the schema up to date (StoreUnavailable,
        retriable, while PostgreSQL is unavailable)."""
        await self.marks.start()

    async def close(self) -> None:
        await self.marks.close()

    async def fire(self, completion: ChordCompleted, body: str, parent: str | None = None) -> None:
        """Send the body unless it was sent; safe to call again after it raised (the
        aggregator retries it while PostgreSQL is unavailable)."""
        event_id = completion.event_id
        if event_id not in self._sent:
            token = self._tokens.setdefault(event_id, f"{self.claimant}:{uuid.uuid4().hex[:12]}")
            mark = await self.marks.begin(event_id, completion.chord_id, token,
                                          self.settings.result_ttl_s or None)
            del self._tokens[event_id]
            if mark.fired:
                log.info("chord %s: body already fired", completion.chord_id)
                return
            if mark.interrupted is not None:
                log.warning("chord %s: a processor died while firing its body (%s); firing it "
                            "again", completion.chord_id, mark.interrupted)
            t0 = time.perf_counter()
            try:
                await asyncio.to_thread(self.fire_sync, completion, body, parent)
            except Exception:  # noqa: BLE001 — the user's app failed: log it, never loop on it
                # (e.g. the broker unreachable past Celery's own publish retries). Firing
                # it again at every restart would stop every other chord behind this one.
                log.exception("chord %s: firing its body failed; it is not fired again",
                              completion.chord_id)
            self._sent.add(event_id)
            log.debug("chord %s: body fired in %.1f ms", completion.chord_id,
                      (time.perf_counter() - t0) * 1000)
        await self.marks.fired(event_id)
        self._sent.discard(event_id)
        await self.marks.sweep_now_and_then()

    def fire_sync(self, completion: ChordCompleted, body: str, parent: str | None = None) -> None:
        """Send the body, or fail it as Celery does (blocking: run in a thread).

        ``parent``: the member counted last, the body's ``parent_id`` (with Celery's
        Redis backend the worker running the last member sends the body, as its child)."""
        from celery import maybe_signature  # type: ignore[import-untyped]
        from celery.exceptions import ChordError  # type: ignore[import-untyped]

        from resultlog.celery_backend.meta import from_json

        app = self.app
        backend = app.backend
        callback = maybe_signature(from_json(body), app=app)
        error: Exception | None = None
        if not completion.successful:
            error = self._chord_error(completion)
        else:
            try:
                results = self._results(completion)
            except ChordError as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 — as Celery: the join's error fails the body
                error = ChordError(f"Join error: {exc!r}")
            else:
                try:
                    callback.apply_async((results,), **({"parent_id": parent} if parent else {}))
                    return
                except Exception as exc:  # noqa: BLE001 — as Celery: a failed send fails the body
                    log.exception("chord %s: sending its body failed", completion.chord_id)
                    error = ChordError(f"Callback error: {exc!r}")
        log.info("chord %s failed: %s", completion.chord_id, error)
        try:
            # Celery's chord_error_from_stack reads the exception being handled.
            raise error
        except Exception:  # noqa: BLE001
            backend.chord_error_from_stack(callback, error)

    def _results(self, completion: ChordCompleted) -> Any:
        from celery.result import GroupResult, allow_join_result  # type: ignore[import-untyped]

        app = self.app
        saved = GroupResult.restore(completion.chord_id, app=app)
        if saved is not None:
            # A header holding groups (saved by apply_chord): joined, for its structure.
            saved.on_ready()
            with allow_join_result():
                return saved.join_native(timeout=app.conf.result_chord_join_timeout, propagate=True)
        from resultlog.celery_backend.meta import from_json

        assert completion.results is not None
        return from_json(completion.results)

    def _chord_error(self, completion: ChordCompleted) -> Exception:
        from celery.exceptions import ChordError, TaskRevokedError

        member = completion.failed_member
        assert member is not None
        if member.exception is None:
            cause: Exception = TaskRevokedError("revoked")
        else:
            rebuilder = getattr(self.app.backend, "rebuilder", None)
            cause = (rebuilder.rebuild(member.exception, None) if rebuilder is not None
                     else Exception(f"{member.exception.type}: {member.exception.message}"))
        # Celery's own wording (celery/backends/redis.py, _unpack_chord_result).
        error: Exception = ChordError(f"Dependency {member.task_id} raised {cause!r}")
        error.__cause__ = cause
        return error
