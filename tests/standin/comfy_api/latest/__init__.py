"""Stand-in for ``comfy_api.latest``: just the V3 pieces the pack uses, so its nodes import and run without ComfyUI.

Signatures follow ComfyUI 0.3.64's, keyword for keyword (tests/comfyui/test_pack_comfyui.py checks that each one
exists in the real API); a misspelt keyword fails here as it would in ComfyUI.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from . import io


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        """Called by ComfyUI 0.27+ before get_node_list (not by 0.3.64)."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """The extension's node classes."""


__all__ = ["ComfyExtension", "io"]
