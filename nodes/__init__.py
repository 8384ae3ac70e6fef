"""EMOSH ComfyUI nodes: one module per stage; this package merges their mappings.

A module that fails to import is logged by name and the others still load, so one missing optional dependency does
not hide the whole pack ("IMPORT FAILED" in ComfyUI's log would name the cause, not just the pack).
"""
from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)

MODULES = ("body", "track", "render", "preview", "generate")

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

for _name in MODULES:
    try:
        _module = importlib.import_module(f".{_name}", __name__)
    except Exception:  # keep the other stages usable; the log says which module failed and why
        log.exception("EMOSH: could not load nodes/%s.py; its nodes are unavailable", _name)
        continue
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
