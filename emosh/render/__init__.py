"""Mesh Condition Renderer: pure-PyTorch z-buffer, semantic shading, OpenPose/DWPose keypoint drawing."""
from __future__ import annotations

from .raster import Fragments, interpolate, rasterize
from .renderer import MODES, RenderBatch, render_all, render_track

__all__ = ["Fragments", "MODES", "RenderBatch", "interpolate", "rasterize", "render_all", "render_track"]
