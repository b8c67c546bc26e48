"""``resultlog dev up | down | status | logs``: the local stack from the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable
from typing import Any

from resultlog.devstack.kafka_nodes import cluster_bootstrap
from resultlog.devstack.secure import dev_secure_settings, exports
from resultlog.devstack.stack import SERVICE_NAMES, DevStack, parse_only
from resultlog.settings import DEV_KAFKA_BROKER_COUNTS, Settings

_ONLY_HELP = f"comma-separated subset of {','.join(SERVICE_NAMES)} (default: all)"
_BROKERS_HELP = (
    "Kafka nodes: 1, or 3 for a KRaft cluster of three broker+controller nodes "
    "(default: RESULTLOG_DEV_KAFKA_BROKERS, else 1); give the same to every `dev` command"
)


_SECURE_HELP = (
    "TLS and authentication everywhere: Kafka SASL_SSL (SCRAM), Redis TLS with an ACL user, "
    "PostgreSQL TLS only, on a CA made in <dev dir>/tls; give it to every `dev` command, or "
    "export what `dev up --secure` prints"
)


def register(subparsers: Any) -> None:
    dev = subparsers.add_parser(
        "dev",
        help="the local development stack (Kafka, Redis, PostgreSQL without Docker)",
        description=(
            "Run Kafka, Redis and PostgreSQL locally on the ports named by the RESULTLOG_* "
            "settings, with their data and logs under RESULTLOG_DEV_DIR."
        ),
    )
    actions = dev.add_subparsers(dest="dev_action", metavar="ACTION", required=True)

    def action(name: str, help: str, func: Callable[[argparse.Namespace], int], *,
               only: bool = True) -> Any:
        """An action with the options every ``dev`` action takes."""
        parser = actions.add_parser(name, help=help)
        if only:
            parser.add_argument("--only", metavar="SERVICES", help=_ONLY_HELP)
        parser.add_argument(
            "--brokers", type=int, choices=DEV_KAFKA_BROKER_COUNTS, metavar="N", help=_BROKERS_HELP
        )
        parser.add_argument("--secure", action="store_true", help=_SECURE_HELP)
        parser.set_defaults(func=func)
        return parser

    action("up", "start what is not running (installing/fetching what is missing)", _up)
    down = action("down", "stop what `dev up` started", _down)
    down.add_argument(
        "--purge", action="store_true", help="also delete the services' data and logs"
    )
    action("status", "show what runs; exit status 1 if a service is down", _status)
    logs = action("logs", "show the end of the services' logs", _logs, only=False)
    logs.add_argument("service", nargs="?", choices=SERVICE_NAMES, help="one service")
    logs.add_argument("-n", "--lines", type=int, default=40, help="lines per log (default 40)")


def _stack(only: str | None, brokers: int | None, secure: bool = False) -> DevStack:
    # aiokafka logs every refused connection at ERROR; readiness probes expect those.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    settings = Settings.from_env()
    if brokers is not None:
        settings = settings.replace(dev_kafka_brokers=brokers)
    if secure:
        settings = dev_secure_settings(settings)
    return DevStack(settings, only=parse_only(only))


def _up(args: argparse.Namespace) -> int:
    stack = _stack(args.only, args.brokers, args.secure)
    reports = asyncio.run(stack.up())
    print()
    for r in reports:
        how = f"started in {r.seconds:.1f} s" if r.started else "already running"
        print(f"  {r.name:<9} {r.address:<17} pid {r.pid:<8} {how}")
    settings = stack.settings
    if settings.dev_kafka_brokers > 1 and any(r.name.startswith("kafka") for r in reports):
        # Clients that know one node only cannot start while that node is down.
        replicas = min(settings.dev_kafka_brokers, 3)
        print(
            "\nKafka is a cluster; for clients that survive losing a node, and topics "
            "replicated on it:\n"
            f"  export RESULTLOG_KAFKA_BOOTSTRAP_SERVERS={cluster_bootstrap(settings)}\n"
            f"  export RESULTLOG_TOPIC_REPLICATION_FACTOR={replicas}\n"
            f"  export RESULTLOG_TOPIC_MIN_INSYNC_REPLICAS={replicas - 1}"
        )
    if args.secure:
        print("\nThe stack requires TLS and a login; for clients (the password stays in its file):")
        print("\n".join(f"  {line}" for line in exports(settings)))
    return 0


def _down(args: argparse.Namespace) -> int:
    asyncio.run(_stack(args.only, args.brokers, args.secure).down(purge=args.purge))
    return 0


def _status(args: argparse.Namespace) -> int:
    stack = _stack(args.only, args.brokers, args.secure)
    states = asyncio.run(stack.status())
    print(f"state directory: {stack.dev_dir}")
    healthy = True
    for s in states:
        if s.pid is None:
            what = "stopped"
            healthy = False
        elif s.answering:
            what = f"running, pid {s.pid}"
        else:
            what = f"running, pid {s.pid}, NOT answering"
            healthy = False
        print(f"  {s.name:<9} {s.address:<17} {what}")
        if s.detail:
            print(f"  {'':<9} {s.detail}")
    return 0 if healthy else 1


def _logs(args: argparse.Namespace) -> int:
    stack = _stack(args.service, args.brokers, args.secure)
    print(stack.logs(max(0, args.lines)))
    return 0
