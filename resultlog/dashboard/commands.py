"""``resultlog dashboard``: serve the dashboard (read-only) with uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any

from resultlog.errors import ConfigurationError, ValidationError
from resultlog.settings import Settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8477


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "dashboard", help="serve the dashboard: tasks, timelines, rates, lag (read-only)",
        description="A read-only web dashboard over the Postgres history and the Redis view "
        "(docs/dashboard.md). Needs the dashboard extra: pip install 'resultlog[dashboard]'.",
    )
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    p.set_defaults(func=_dashboard)


def check_address(host: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValidationError(f"--port {port}: must be between 0 and 65535")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValidationError(
                f"--host {host!r}: give an IP address to listen on (127.0.0.1, ::1, 0.0.0.0) "
                "or localhost") from None


def _dashboard(args: argparse.Namespace) -> int:
    check_address(args.host, args.port)
    try:
        import uvicorn

        from resultlog.dashboard.app import create_app
    except ImportError as exc:
        raise ConfigurationError(
            f"the dashboard needs the dashboard extra ({exc.name} is missing): "
            "pip install 'resultlog[dashboard]'") from None
    settings = Settings.from_env()
    print(f"resultlog dashboard: http://{args.host}:{args.port}/ (read-only; Ctrl-C stops)",
          flush=True)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=2)
    return 0
