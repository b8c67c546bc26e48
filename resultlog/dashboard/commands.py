"""``resultlog dashboard``: serve the dashboard (read-only) with uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import socket
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


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host``:``port`` (0: a free port the system picks), bound
    here rather than by uvicorn so that the address printed is the one it got."""
    # IPv6 when the address says so, as uvicorn decides; "localhost" is 127.0.0.1.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Listening before the address is printed: a client that reads it and connects
        # at once waits in the backlog until the app has started, instead of refused.
        sock.listen()
    except OSError as exc:
        sock.close()
        raise ValidationError(
            f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
            "choose another --port, or --port 0 for a free one") from None
    return sock


def address_url(sock: socket.socket) -> str:
    """``http://host:port/`` of a listening socket; an IPv6 host in brackets."""
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if sock.family == socket.AF_INET6 else host}:{port}/"


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
    sock = listen(args.host, args.port)
    print(f"resultlog dashboard: {address_url(sock)} (read-only; Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(
        create_app(settings), host=args.host, port=args.port, log_level="warning",
        timeout_graceful_shutdown=2))
    try:
        # What uvicorn.run does, on the socket bound above; a failed start exits there.
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0
