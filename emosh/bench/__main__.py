import importlib
import sys

NAMES = ("body", "tracker", "render", "animate", "generate", "longvideo")

if len(sys.argv) < 2 or sys.argv[1] not in NAMES:
    print(f"usage: python -m emosh.bench {{{','.join(NAMES)}}} [--json] [options]", file=sys.stderr)
    raise SystemExit(2)
raise SystemExit(importlib.import_module(f"emosh.bench.{sys.argv[1]}").main(sys.argv[2:]) or 0)
