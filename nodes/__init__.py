"""EMOSH ComfyUI nodes: one module per stage; this package collects their V3 node classes.

A module that fails to import is logged by name and the others still load, so one missing optional dependency does
not hide the whole pack ("IMPORT FAILED" in ComfyUI's log would name the cause, not just the pack).
"""
from __future__ import annotations

import importlib
import logging

from comfy_api.latest import io

log = logging.getLogger(__name__)

MODULES = ("body", "track", "render", "preview", "generate")

NODES: list[type[io.ComfyNode]] = []

for _name in MODULES:
    try:
        _module = importlib.import_module(f".{_name}", __name__)
    except Exception:  # keep the other stages usable; the log says which module failed and why
        log.exception("EMOSH: could not load nodes/%s.py; its nodes are unavailable", _name)
        continue
    NODES.extend(_module.NODES)
