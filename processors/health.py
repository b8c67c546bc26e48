"""The processor's HTTP endpoint (docs/operations.md): Prometheus metrics, liveness and
readiness, served by the processor's own event loop, so an answer also proves the loop
is not blocked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from resultlog.errors import ConfigurationError
from resultlog.processors.foldstatus import FoldStatus, readiness
from resultlog.processors.metrics import ProcessorMetrics
from resultlog.settings import Settings

log = logging.getLogger("resultlog.processor")

METRICS_PATH = "/metrics"
LIVE_PATH = "/health/live"
READY_PATH = "/health/ready"


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, sort_keys=True) + "\n",
                        content_type="application/json")


class HealthServer:
    def __init__(self, settings: Settings, metrics: ProcessorMetrics,
                 status: Callable[[], FoldStatus]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.status = status
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen, or raise :class:`ConfigurationError` naming the settings (port taken,
        address not on this host)."""
        s = self.settings
        app = web.Application()
        app.router.add_get(METRICS_PATH, self._metrics)
        app.router.add_get(LIVE_PATH, self._live)
        app.router.add_get(READY_PATH, self._ready)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, s.metrics_host, s.metrics_port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigurationError(
                f"cannot serve metrics on {s.metrics_host}:{s.metrics_port}: {exc.strerror or exc} "
                "(set RESULTLOG_METRICS_PORT to a free port, 0 to turn metrics off, or "
                "RESULTLOG_METRICS_HOST to an address of this host)") from exc
        self._runner = runner
        log.info("serving metrics on http://%s:%s%s, health on %s and %s", s.metrics_host,
                 s.metrics_port, METRICS_PATH, LIVE_PATH, READY_PATH)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.metrics.registry),
                            headers={"Content-Type": content_type})

    async def _live(self, request: web.Request) -> web.Response:
        if self.status().failed:
            return _json(503, {"live": False, "reason": "the fold stopped on an error"})
        return _json(200, {"live": True})

    async def _ready(self, request: web.Request) -> web.Response:
        st = self.status()
        verdict = readiness(st, self.settings.ready_max_lag)
        partitions = {str(p): {"position": pp.position, "log_end": pp.log_end, "lag": pp.lag}
                      for p, pp in sorted(st.partitions.items())}
        return _json(200 if verdict.ready else 503,
                     {"ready": verdict.ready, "reason": verdict.reason, "partitions": partitions,
                      "view_rebuild_in_progress": st.rebuilding})
