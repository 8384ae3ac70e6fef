"""Face crops of the driver for Wan-Animate's ``face_video`` input (WanAnimateToVideo), from the tracked face.

Wan-Animate was trained on crops made by ``get_face_bboxes`` (pose-drawing.md §2.5): the box of the 68 iBUG face
points, widened by √1.3 (more room above the brows than below the chin), stretched to 512×512. We use the same box
rule on the *detected* face where the track holds its detections (Wan's crops come from its detector too; the fitted
face is a few % narrower), on the fitted face in frames without one, then smooth the box over time: raw per-frame
boxes jitter, and a jittering crop reads to the face encoder as head motion.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from . import keypoints as kp
from .body.camera import project
from .body.landmarks import mesh_landmarks
from .body.model import BodyModel
from .body.track import LANDMARK_GROUPS, EHMTrack, seen_landmarks
from .errors import InputError
from .temporal import gaussian_filter

CHUNK = 64  # frames per body-model forward: bounds memory on long videos


def tracked_landmarks_2d(model: BodyModel, track: EHMTrack, chunk: int = CHUNK) -> torch.Tensor:
    """Pixel positions [T, 553, 2] of the MediaPipe landmarks on the fitted body, in the track's image."""
    track.check_backend(model.backend)
    out = []
    for a in range(0, track.num_frames, chunk):
        part = track.frames(a, min(a + chunk, track.num_frames)).to(model.device)
        with torch.no_grad():
            body = model(part.shape, **part.motion())
            points = mesh_landmarks(model, body)
            out.append(project(points, part.focal, part.cam_R, part.cam_t, track.image_size).cpu())
    return torch.cat(out)


def face_landmarks_2d(model: BodyModel, track: EHMTrack) -> torch.Tensor:
    """[T, 553, 2]: the detected landmarks in frames where the whole face was detected, else the fitted ones."""
    fitted = tracked_landmarks_2d(model, track)
    if track.landmarks2d is None:
        return fitted
    detected = track.landmarks2d.cpu().to(fitted)
    face = slice(*LANDMARK_GROUPS["face"])
    seen = seen_landmarks(detected, track.confidence.cpu(), track.image_size)[:, face].all(1)
    return torch.where(seen[:, None, None], detected, fitted)


def wan_face_boxes(face68: torch.Tensor, scale: float = 1.3) -> torch.Tensor:
    """Wan-Animate's face box [T, 4] (x1, y1, x2, y2) around 68 face points [T, 68, 2], before clipping.

    With s = √scale: x grows by (s − 1)·w/2 on each side; with d = (s − 1)·h/4, y grows by 3d upwards (forehead)
    and d downwards (chin), as in the official pre-processing.
    """
    lo, hi = face68.min(dim=1).values, face68.max(dim=1).values
    w, h = hi[:, 0] - lo[:, 0], hi[:, 1] - lo[:, 1]
    s = math.sqrt(scale)
    dx, dy = (s - 1) * w / 2, (s - 1) * h / 4
    return torch.stack([lo[:, 0] - dx, lo[:, 1] - 3 * dy, hi[:, 0] + dx, hi[:, 1] + dy], dim=1)


def smooth_boxes(boxes: torch.Tensor, sigma: float) -> torch.Tensor:
    """Zero-lag Gaussian smoothing over time of box centre and size."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = boxes[:, 2:] - boxes[:, :2]
    centre, size = gaussian_filter(centre, sigma), gaussian_filter(size, sigma)
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def crop_resize(frame: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """The box of ``frame`` stretched to size×size (sub-pixel box corners, bilinear like Wan's cv2.resize).

    Pixel-centre convention, as cv2.resize: output pixel u samples x = x1 + (u + 0.5) / sx - 0.5, so a box on whole
    pixels gives exactly ``cv2.resize(frame[y1:y2, x1:x2], (size, size))``.
    """
    x1, y1, x2, y2 = [float(v) for v in box]
    sx, sy = size / max(x2 - x1, 1.0), size / max(y2 - y1, 1.0)
    matrix = np.array([[sx, 0.0, sx * (0.5 - x1) - 0.5], [0.0, sy, sy * (0.5 - y1) - 0.5]], dtype=np.float64)
    return cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


def face_crops(frames: np.ndarray, track: EHMTrack, model: BodyModel, size: int = 512, scale: float = 1.3,
               smoothing: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame face crops uint8 [T, size, size, 3] of the driving ``frames`` and their boxes [T, 4] in pixels.

    ``frames`` are the frames the track was made from (any resolution with the same aspect: boxes are rescaled);
    ``smoothing`` is the temporal Gaussian sigma in frames (0 = per-frame boxes).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"face_crops expects RGB uint8 frames [T, H, W, 3], got {frames.shape} {frames.dtype}")
    if frames.shape[0] != track.num_frames:
        raise InputError(f"{frames.shape[0]} frames were given for a track of {track.num_frames} frames; connect the "
                         f"same video the track was made from")
    landmarks = face_landmarks_2d(model, track)
    visible = torch.ones(landmarks.shape[:2], dtype=torch.bool)
    face68, _ = kp.to_face68(landmarks, visible)
    th, tw = track.image_size
    fh, fw = frames.shape[1:3]
    face68 = face68 * face68.new_tensor([fw / tw, fh / th])
    boxes = smooth_boxes(wan_face_boxes(face68, scale), smoothing)
    boxes = torch.stack([boxes[:, 0].clamp(0, fw - 1), boxes[:, 1].clamp(0, fh - 1),  # clipped, as Wan does
                         boxes[:, 2].clamp(1, fw), boxes[:, 3].clamp(1, fh)], dim=1)
    boxes_np = boxes.numpy()
    crops = np.stack([crop_resize(f, b, size) for f, b in zip(frames, boxes_np)])
    return crops, boxes_np
