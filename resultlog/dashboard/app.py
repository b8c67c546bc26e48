"""The dashboard's web application: a read-only Starlette app over the history and views
(docs/dashboard.md). Only GET exists: the dashboard never writes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from resultlog.analytics_commands import parse_duration, parse_time
from resultlog.dashboard.live import LiveHub, sse_stream
from resultlog.dashboard.queries import HistoryReads
from resultlog.dashboard.rollups import RollupReads, minute_window
from resultlog.dashboard.status import PipelineStatus
from resultlog.dashboard.tasklist import Cursor, TaskFilter, task_page
from resultlog.dashboard.templating import TASK_BY_QUERY, environment
from resultlog.dashboard.workers import WorkerReads
from resultlog.errors import (BrokerUnavailable, ConfigurationError, ResultlogError,
                              StoreUnavailable, ValidationError)
from resultlog.redis_access import async_client, pubsub_client, translated
from resultlog.schemas.event import validate_task_id
from resultlog.schemas.states import State
from resultlog.settings import Settings
from resultlog.views.analytics import Analytics, NameStats
from resultlog.views.history import HistoryStore
from resultlog.views.pg import create_pool, guarded

#: Windows the overview and workers pages offer, and the plot buckets for each (whole
#: minutes: the overview reads per-minute rollups).
WINDOWS: Mapping[str, timedelta] = {
    "15m": timedelta(minutes=1), "1h": timedelta(minutes=1),
    "6h": timedelta(minutes=5), "24h": timedelta(minutes=20),
}
DEFAULT_WINDOW = "1h"
STATIC_DIR = Path(__file__).with_name("static")


class Dashboard:
    """What the pages read from, opened for the app's lifetime."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.templates = environment()

    async def start(self) -> None:
        s = self.settings
        self.pool = await create_pool(s, application_name="resultlog-dashboard", max_size=8)
        # resultlog's clients: a Redis that hangs fails a page after RESULTLOG_REDIS_TIMEOUT_S.
        self.redis = async_client(s)
        self.history = HistoryStore(s, self.pool)
        self.analytics = Analytics(s, self.pool)
        self.reads = HistoryReads(self.pool, s.postgres_schema)
        self.rollups = RollupReads(self.pool, s.postgres_schema)
        self.workers = WorkerReads(self.pool, s.postgres_schema)
        self.status = PipelineStatus(s, self.redis, self.history)
        await self.status.start()
        self.live_redis = pubsub_client(s)  # a pub/sub connection: reads unbounded
        self.hub = LiveHub(self.live_redis, s.redis_prefix)

    async def close(self) -> None:
        await self.hub.close()
        await self.status.close()
        await self.redis.aclose()
        await self.live_redis.aclose()
        await self.pool.close()

    def render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.templates.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status_code)


def window_of(request: Request) -> tuple[str, datetime, datetime, timedelta]:
    key = request.query_params.get("window", DEFAULT_WINDOW)
    if key not in WINDOWS:
        raise ValidationError(f"window {key!r}: choose one of {', '.join(WINDOWS)}")
    since, until = minute_window(parse_duration(key, "window"), datetime.now(timezone.utc))
    return key, since, until, WINDOWS[key]


async def overview(request: Request) -> Response:
    d: Dashboard = request.app.state.dashboard
    key, since, until, width = window_of(request)
    # Independent reads, each on its own pooled connection: the page waits for the
    # slowest, not for the sum.
    series, table, lag, letters, recent = await asyncio.gather(
        d.rollups.state_series(since, until, width), d.rollups.by_name(since, until),
        d.status.lag(), d.status.dead_letters(), d.reads.recent_chords(since))
    names = [r.task_name for r in table if r.task_name is not None]
    name = request.query_params.get("name") or (
        max(table, key=lambda r: r.outcomes).task_name if table else None)
    by_name, chords = await asyncio.gather(
        d.rollups.name_buckets(name, since, until, width) if name is not None
        else _nothing(),
        d.status.chords([c for c, _ in recent]))
    plots = {
        "states": {"x": series.bucket_starts, "series": series.per_state},
        "name": name_series(by_name, series.bucket_starts),
    }
    return d.render("overview.html", page="overview", window=key, windows=list(WINDOWS),
                    table=table, names=names, name=name, plots=plots, lag=lag,
                    letters=letters, chords=[c for c in chords if not c.ready],
                    rebuilding=any(p.view_gap for p in lag))


async def _nothing() -> list[NameStats]:
    return []


def name_series(rows: list[NameStats], starts: list[float]) -> dict[str, Any]:
    """One name's per-bucket statistics laid on every bucket of the window (None where
    the bucket had no outcome), so the plots span the whole window."""
    at = {r.bucket_start.timestamp(): r for r in rows}

    def column(field: str) -> list[float | None]:
        return [getattr(at[x], field) if x in at else None for x in starts]

    return {
        "x": starts,
        "rates": {"success": column("success_rate"), "failure": column("failure_rate"),
                  "retry": column("retry_rate")},
        "runtime": {"p50": column("runtime_p50"), "p95": column("runtime_p95"),
                    "p99": column("runtime_p99")},
    }


def task_filter(request: Request) -> TaskFilter:
    q = request.query_params
    now = datetime.now(timezone.utc)
    state = q.get("state") or None
    return TaskFilter(
        state=None if state is None else State.parse(state),
        name=q.get("name") or None,
        worker=q.get("worker") or None,
        since=parse_time(q["since"], "since", now) if q.get("since") else None,
        until=parse_time(q["until"], "until", now) if q.get("until") else None,
        id_prefix=q.get("id") or None,
    )


async def tasks(request: Request) -> Response:
    d: Dashboard = request.app.state.dashboard
    f = task_filter(request)
    q = request.query_params
    cursor = q.get("before") or q.get("after")
    page = await task_page(d.pool, d.settings.postgres_schema, f,
                           Cursor.decode(cursor) if cursor else None, newer=bool(q.get("before")))
    keep = {k: v for k, v in q.items() if k not in ("after", "before") and v}
    return d.render("tasks.html", page="tasks", rows=page.rows, filters=keep,
                    older=page.older.encode() if page.older else None,
                    newer=page.newer.encode() if page.newer else None,
                    states=[s.value for s in State], names=await d.reads.names())


async def task(request: Request) -> Response:
    """A task's page: ``/tasks/{id}``, or ``/task?id=`` for the ids a path cannot carry
    (templating.task_href)."""
    d: Dashboard = request.app.state.dashboard
    given = request.path_params.get("task_id", request.query_params.get("id", ""))
    task_id = validate_task_id(given)
    summary = await d.analytics.task(task_id)
    if summary is None:
        return d.render("error.html", 404, page="tasks",
                        message=f"The history has no event of task {task_id!r}.")
    transitions = await d.analytics.transitions(task_id)
    events = [t.event for t in transitions]

    def latest(field: str) -> str | None:
        values = [getattr(e, field) for e in events if getattr(e, field) is not None]
        return values[-1] if values else None

    lineage = await d.reads.lineage(task_id, latest("parent_id"), latest("root_id"),
                                    latest("group_id"), latest("chord_id"))
    chord = await d.status.chords([lineage.chord_id]) if lineage.chord_id else []
    winner = events[-1]
    return d.render("task.html", page="tasks", task=summary, transitions=transitions,
                    winner=winner, args=latest("args"), kwargs=latest("kwargs"),
                    lineage=lineage, chord=chord[0] if chord else None)


async def workers(request: Request) -> Response:
    d: Dashboard = request.app.state.dashboard
    key, since, _, _ = window_of(request)
    return d.render("workers.html", page="workers", window=key, windows=list(WINDOWS),
                    rows=await d.workers.workers(since, datetime.now(timezone.utc)))


async def live(request: Request) -> Response:
    d: Dashboard = request.app.state.dashboard
    return StreamingResponse(sse_stream(d.hub), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


Page = Callable[[Request], Awaitable[Response]]


def reads_stores(page: Page) -> Page:
    """``page`` with the stores' own errors made resultlog's, so that they reach
    on_user_error as a page saying what to do rather than a bare 500: PostgreSQL or
    Redis unreachable, and a schema the processor has not yet migrated (the dashboard
    never creates tables: it only reads)."""
    async def read(request: Request) -> Response:
        d: Dashboard = request.app.state.dashboard
        with guarded(d.settings, Analytics.not_migrated), translated("reading a dashboard page"):
            return await page(request)
    return read


# Errors of the service rather than of the request: the same request may succeed later.
NOT_READY = (StoreUnavailable, BrokerUnavailable, ConfigurationError)


async def on_user_error(request: Request, exc: Exception) -> Response:
    d: Dashboard = request.app.state.dashboard
    status = 503 if isinstance(exc, NOT_READY) else 400
    return d.render("error.html", status, page="", message=str(exc))


class ServerTiming:
    """Adds ``Server-Timing: app;dur=<ms>`` to each response: the time from the request
    to the response's first bytes, which for a page is all of its work (it is rendered
    before it is sent). Browsers show it; bench/dashboard_pages.py reads it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - started) * 1000
                headers = list(message.get("headers", []))
                headers.append((b"server-timing", f"app;dur={ms:.1f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed)


def create_app(settings: Settings) -> Starlette:
    dashboard = Dashboard(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await dashboard.start()
        app.state.dashboard = dashboard
        try:
            yield
        finally:
            await dashboard.close()

    routes = [
        Route("/", reads_stores(overview)),
        Route("/tasks", reads_stores(tasks)),
        Route("/tasks/{task_id:path}", reads_stores(task)),
        Route(TASK_BY_QUERY, reads_stores(task)),
        Route("/workers", reads_stores(workers)),
        Route("/live", live),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(ServerTiming)],
                     exception_handlers={ResultlogError: on_user_error})
