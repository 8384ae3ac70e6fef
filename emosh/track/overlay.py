"""Tracker overlay: the fitted mesh (semantic colours, lit) blended over the input frames, with the fitted
landmarks (green, skeleton lines) and the raw detections (red) drawn on top. Written as an mp4, or as a PNG
montage of a few evenly spaced frames, to judge a track at a glance.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
import torch

from ..body.camera import project_camera_points, to_camera
from ..body.landmarks import mesh_landmarks
from ..body.model import BodyModel
from ..body.raster import rasterize
from ..body.shading import semantic_colors, shaded, vertex_normals
from ..body.track import EHMTrack
from ..keypoints import HAND_BONES

# MediaPipe pose skeleton (subject's left = odd indices) for the fitted-landmark lines
POSE_LINES = [(11, 12), (11, 13), (13, 15), (12, 14), (14, 16), (11, 23), (12, 24), (23, 24), (23, 25), (25, 27),
              (27, 29), (29, 31), (27, 31), (24, 26), (26, 28), (28, 30), (30, 32), (28, 32), (0, 2), (0, 5),
              (2, 7), (5, 8), (9, 10)]
FACE_STEP = 4  # draw every 4th face-mesh point (478 dots hide the face)
ALPHA = 0.55


def overlay_frames(frames: Iterable[np.ndarray], track: EHMTrack, model: BodyModel, chunk: int = 8,
                   draw_detections: bool = True) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames (input size) with the fitted mesh and landmarks drawn over ``frames``."""
    track.check_backend(model.backend)
    colors = semantic_colors(model)
    faces = model.faces
    size = track.image_size
    buffer: list[np.ndarray] = []
    start = 0
    for frame in frames:
        if frame.shape[:2] != size:
            frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        buffer.append(frame)
        if len(buffer) == chunk:
            yield from _render_chunk(buffer, track.frames(start, start + chunk), model, colors, faces,
                                     draw_detections)
            start += chunk
            buffer = []
        if start + len(buffer) >= track.num_frames:
            break
    if buffer:
        yield from _render_chunk(buffer, track.frames(start, start + len(buffer)), model, colors, faces,
                                 draw_detections)


def _render_chunk(frames: list[np.ndarray], part: EHMTrack, model: BodyModel, colors, faces,
                  draw_detections: bool) -> Iterator[np.ndarray]:
    dev = model.device
    size = part.image_size
    with torch.no_grad():
        out = model(part.shape, **{k: v.to(dev) for k, v in part.motion().items()})
        cam = to_camera(out.vertices, part.cam_R.to(dev), part.cam_t.to(dev))
        pix = project_camera_points(cam, part.focal.to(dev), size)
        frags = rasterize(torch.cat([pix, cam[..., 2:]], -1), faces, size, cull_backfaces=True)
        mesh = shaded(frags, faces, colors, vertex_normals(cam, faces), background=0.0, as_uint8=True).cpu().numpy()
        mask = frags.mask.cpu().numpy()
        lm_cam = to_camera(mesh_landmarks(model, out), part.cam_R.to(dev), part.cam_t.to(dev))
        fitted = project_camera_points(lm_cam, part.focal.to(dev), size).cpu().numpy()
    det = part.landmarks2d.cpu().numpy() if part.landmarks2d is not None else None
    conf = part.confidence.cpu().numpy()
    for i, frame in enumerate(frames):
        img = frame.astype(np.float32)
        m = mask[i][..., None]
        img = np.where(m, (1 - ALPHA) * img + ALPHA * mesh[i], img).astype(np.uint8)
        img = np.ascontiguousarray(img)
        scale = max(1, round(max(size) / 512))
        if det is not None and draw_detections:
            for k in _drawn_points():
                if conf[i, k] >= 0.3:
                    cv2.circle(img, _pt(det[i, k]), scale + 1, (255, 40, 40), -1, cv2.LINE_AA)
        _draw_skeleton(img, fitted[i], scale)
        if not bool(part.detected[i]):
            cv2.putText(img, "interpolated", (8, 20 * scale), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale,
                        (255, 255, 0), scale, cv2.LINE_AA)
        yield img


def _drawn_points() -> list[int]:
    return list(range(75)) + list(range(75, 553, FACE_STEP))


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def _draw_skeleton(img: np.ndarray, pts: np.ndarray, scale: int) -> None:
    green = (40, 255, 60)
    for a, b in POSE_LINES:
        cv2.line(img, _pt(pts[a]), _pt(pts[b]), green, scale, cv2.LINE_AA)
    for start in (33, 54):
        for a, b in HAND_BONES:
            cv2.line(img, _pt(pts[start + a]), _pt(pts[start + b]), (60, 220, 255), max(1, scale - 1), cv2.LINE_AA)
    for k in _drawn_points():
        cv2.circle(img, _pt(pts[k]), scale, green, -1, cv2.LINE_AA)


def montage(images: list[np.ndarray], columns: int = 4, width: int = 1600) -> np.ndarray:
    """Grid of equally sized tiles (RGB uint8) about ``width`` pixels wide."""
    columns = min(columns, len(images))
    h, w = images[0].shape[:2]
    tile_w = width // columns
    tile_h = max(1, round(h * tile_w / w))
    rows = (len(images) + columns - 1) // columns
    grid = np.zeros((rows * tile_h, columns * tile_w, 3), np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, columns)
        grid[r * tile_h:(r + 1) * tile_h, c * tile_w:(c + 1) * tile_w] = cv2.resize(img, (tile_w, tile_h),
                                                                                  interpolation=cv2.INTER_AREA)
    return grid


def write_overlay(path: str | os.PathLike, frames: Iterable[np.ndarray], track: EHMTrack, model: BodyModel,
                  tiles: int = 8) -> Path:
    """``.png``/``.jpg``: a montage of ``tiles`` evenly spaced frames; otherwise an mp4 of every frame."""
    from ..video import VideoWriter, write_image

    path = Path(path)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        wanted = set(np.linspace(0, track.num_frames - 1, min(tiles, track.num_frames)).round().astype(int).tolist())
        picked: list[np.ndarray] = []
        for t, frame in enumerate(frames):
            if t in wanted:
                picked.append(next(overlay_frames([frame], track.frames(t, t + 1), model)))
            if t >= track.num_frames - 1:
                break
        return write_image(path, montage(picked))
    with VideoWriter(path, track.fps) as writer:
        for img in overlay_frames(frames, track, model):
            writer.write(img)
    return path
