"""The ``resultlog`` command line.

Each command group lives beside the code it drives and exposes
``register(subparsers)``; this module only wires them together, so adding a command
never grows this file beyond one line in ``_COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from resultlog.errors import ResultlogError

# Modules that provide ``register(subparsers) -> None``; each sets ``func`` on its parsers.
_COMMAND_MODULES: tuple[str, ...] = (
    "resultlog.devstack.commands",
    "resultlog.processors.commands",
    "resultlog.demo",
    "resultlog.analytics_commands",
    "resultlog.dashboard.commands",
)


_NO_VALUE = re.compile(r"argument (--[\w-]+)(?:/-\w)?: expected one argument")


class CommandParser(argparse.ArgumentParser):
    """argparse's parser (the subcommands' too), whose "expected one argument" says how
    to give a value that begins with '-' (``--older-than -3d``): argparse takes such a
    value for an option, and its message alone does not say so."""

    def error(self, message: str) -> NoReturn:
        match = _NO_VALUE.search(message)
        if match:
            message += (f" (a value that begins with '-' is given with '=': {match[1]}=VALUE)")
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="resultlog",
        description="Event-sourced task results: Kafka log, Redis view, Postgres history.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except ResultlogError as exc:
        print(f"resultlog: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("resultlog: interrupted", file=sys.stderr)
        return 130
