"""Pinhole camera shared by the tracker, renderer, align and exporters (one place for projection maths).

OpenCV convention: x right, y down, z forward; pixel = f * (x/z, y/z) + principal point (the image centre).
Per frame: focal f (pixels), rotation R and translation t taking model-world points into the camera frame.
Camera keyframes (zoom / pan edits of a track's camera) are applied here too, for Track Edit and retarget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import InputError
from .track import EHMTrack


def to_camera(points: torch.Tensor, cam_R: torch.Tensor, cam_t: torch.Tensor) -> torch.Tensor:
    """World → camera frame: [B, N, 3] with R [B, 3, 3], t [B, 3]."""
    return points @ cam_R.transpose(1, 2) + cam_t[:, None, :]


def project(points: torch.Tensor, focal: torch.Tensor, cam_R: torch.Tensor, cam_t: torch.Tensor,
            image_size: tuple[int, int]) -> torch.Tensor:
    """World points [B, N, 3] → pixels [B, N, 2] (x, y) for an image of ``(height, width)``."""
    cam = to_camera(points, cam_R, cam_t)
    return project_camera_points(cam, focal, image_size)


def project_camera_points(cam: torch.Tensor, focal: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    height, width = image_size
    z = cam[..., 2:3].clamp(min=1e-4)
    centre = cam.new_tensor([width / 2.0, height / 2.0])
    return focal.view(-1, 1, 1) * cam[..., :2] / z + centre


def default_focal(image_size: tuple[int, int], fov_degrees: float = 50.0) -> float:
    """Focal length (pixels) of a typical phone/webcam field of view over the longer image side."""
    return 0.5 * max(image_size) / math.tan(math.radians(fov_degrees) / 2.0)


def view_rotation(up_axis: int) -> torch.Tensor:
    """Rotation that looks at a model standing along ``up_axis`` from its front.

    Anny (Z up, facing -Y): camera x = world x, camera y (down) = -world z, camera z (forward) = +world y.
    SMPL-X (Y up, facing +Z): camera x = world x, camera y = -world y, camera z = -world z.
    """
    if up_axis == 2:
        return torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    if up_axis == 1:
        return torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
    raise ValueError(f"unsupported up axis {up_axis}")


# ---------------------------------------------------------------------------------------------- camera keyframes
@dataclass(frozen=True)
class CameraKey:
    """Camera edit at one frame: ``zoom`` multiplies the focal length (2 = twice as close), ``pan_x``/``pan_y`` move
    the picture by that fraction of the image width/height (positive = right/down)."""

    frame: int
    zoom: float = 1.0
    pan_x: float = 0.0
    pan_y: float = 0.0


def camera_curve(keys: Sequence[CameraKey], frames: int) -> torch.Tensor:
    """Per-frame (zoom, pan_x, pan_y) [T, 3], linear between keys and held before the first / after the last."""
    if not keys:
        return torch.tensor([1.0, 0.0, 0.0]).repeat(frames, 1)
    at = torch.tensor([float(k.frame) for k in keys])
    values = torch.tensor([[k.zoom, k.pan_x, k.pan_y] for k in keys])
    t = torch.arange(frames, dtype=torch.float32).clamp(float(at[0]), float(at[-1]))
    idx = torch.searchsorted(at, t, right=True).clamp(1, max(len(keys) - 1, 1)) - 1
    nxt = (idx + 1).clamp(max=len(keys) - 1)
    span = (at[nxt] - at[idx]).clamp(min=1e-6)
    w = ((t - at[idx]) / span).clamp(0, 1)[:, None]
    return values[idx] + (values[nxt] - values[idx]) * w


def apply_camera_keys(track: EHMTrack, keys: Sequence[CameraKey]) -> EHMTrack:
    """Zoom about the image centre and pan the picture, keeping the person and the image size unchanged.

    Pan moves the camera sideways by the distance that shifts the body's origin (pelvis) by the requested pixels.
    """
    if not keys:
        return track
    curve = camera_curve(keys, track.num_frames).to(track.device)
    zoom, pan = curve[:, 0], curve[:, 1:]
    focal = track.focal * zoom
    pelvis_cam = (track.cam_R @ track.translation[:, :, None])[:, :, 0] + track.cam_t
    depth = pelvis_cam[:, 2].clamp(min=1e-3)
    height, width = track.image_size
    shift_px = pan * pan.new_tensor([width, height])
    cam_t = track.cam_t.clone()
    cam_t[:, :2] += shift_px * depth[:, None] / focal[:, None]
    return track.replace(focal=focal, cam_t=cam_t)


def parse_camera_keys(text: str) -> list[CameraKey]:
    """Keyframes from text, one per line: ``frame zoom [pan_x [pan_y]]`` (commas allowed; ``#`` starts a comment)."""
    keys = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        parts = line.split()
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise InputError(f"Camera keyframe line {number} ({raw.strip()!r}): expected numbers "
                             f"'frame zoom [pan_x [pan_y]]'") from None
        if not 2 <= len(values) <= 4 or values[0] != int(values[0]) or values[0] < 0:
            raise InputError(f"Camera keyframe line {number} ({raw.strip()!r}): expected 'frame zoom [pan_x [pan_y]]' "
                             f"with a whole, non-negative frame number")
        if values[1] <= 0:
            raise InputError(f"Camera keyframe line {number}: zoom must be positive, got {values[1]}")
        keys.append(CameraKey(int(values[0]), *values[1:]))
    frames = [k.frame for k in keys]
    if len(set(frames)) != len(frames):
        raise InputError(f"Camera keyframes repeat a frame: {sorted(frames)}")
    return sorted(keys, key=lambda k: k.frame)
