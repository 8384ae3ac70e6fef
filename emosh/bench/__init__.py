"""Benchmarks: ``python -m emosh.bench <name> [--json]``; each prints one JSON object as its last line."""
