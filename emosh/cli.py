"""``python -m emosh <command>``: one sub-command per pipeline stage plus ``animate`` (the main job).

Each command module exposes ``register(subparsers)`` which adds its parser and sets ``func(args) -> int``.
Commands print a JSON summary as their last stdout line so scripts and benchmarks can parse them.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

COMMAND_MODULES = [  # one module per stage; each adds its sub-commands
    "emosh.render.cli",
    "emosh.track.cli",
    "emosh.commands",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emosh", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    args = parser.parse_args(argv)
    from .errors import EmoshError

    try:
        return int(args.func(args) or 0)
    except EmoshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no partial output was kept", file=sys.stderr)
        return 130


def emit_summary(summary: dict) -> None:
    """Print the machine-readable summary as the last stdout line."""
    print(json.dumps(summary, sort_keys=True), flush=True)
