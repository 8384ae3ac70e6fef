"""Mesh Condition Renderer: control-video modes (on ``emosh.body``'s z-buffer and shading), keypoint drawing."""
from __future__ import annotations

from .renderer import MODES, RenderBatch, render_all, render_track

__all__ = ["MODES", "RenderBatch", "render_all", "render_track"]
