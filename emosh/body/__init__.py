"""Expressive Human Model: backend-neutral body models, the ``EHMTrack`` record, and what every stage above
shares about them: camera, joint groups, the landmark table, the z-buffer and shading."""
from __future__ import annotations

from typing import Iterable

import torch

from .model import BodyModel, BodyOutput
from .track import EHMTrack, LANDMARK_GROUPS, NUM_LANDMARKS

BACKENDS = ("anny", "smplx_flame")


def load_body_model(backend: str = "anny", device: str | torch.device = "cpu",
                    model_dirs: Iterable[str] = ()) -> BodyModel:
    """The cached body model of ``backend`` on ``device`` (Anny ships in its wheel; SMPL-X+FLAME needs user files)."""
    if backend == "anny":
        from .anny_backend import anny_body

        return anny_body(device)
    if backend == "smplx_flame":
        from .smplx_flame import smplx_flame_body

        return smplx_flame_body(device, model_dirs)
    raise ValueError(f"Unknown body model backend {backend!r}; choose one of {BACKENDS}")


__all__ = ["BACKENDS", "BodyModel", "BodyOutput", "EHMTrack", "LANDMARK_GROUPS", "NUM_LANDMARKS", "load_body_model"]
