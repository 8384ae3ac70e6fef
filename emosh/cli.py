"""``python -m emosh <command>``: one sub-command per pipeline stage plus ``animate`` (the main job).

Each command's parser lives beside the command: its module exposes ``register(subparsers)``, which adds the parser
and sets ``func(args) -> dict``. This module only dispatches, and prints the returned summary as JSON on the last
stdout line so scripts and benchmarks can parse it.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

COMMAND_MODULES = [  # the modules whose register() adds sub-commands, in the order --help lists them
    "emosh.retarget",  # retarget
    "emosh.render.cli",  # render
    "emosh.track.cli",  # track
    "emosh.commands",  # animate, demo
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emosh", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    args = parser.parse_args(argv)
    from .errors import EmoshError

    try:
        summary = args.func(args)
    except EmoshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no partial output was kept", file=sys.stderr)
        return 130
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0
