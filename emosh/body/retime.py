"""A track on another timeline: resampled at given times or to another frame rate.

Track Mix uses it to put its sources on one timeline; it lives beside ``EHMTrack`` so that stages below the features
(e.g. rendering at SCAIL's 16 fps) can use it too.
"""
from __future__ import annotations

import math

import roma
import torch

from ..errors import InputError
from .joints import slerp_rotvec
from .track import EHMTrack


def resample(track: EHMTrack, times: torch.Tensor) -> EHMTrack:
    """The track evaluated at ``times`` (seconds from its first frame); times outside the clip hold the end frames.

    Positions, coefficients and confidences are interpolated linearly, rotations (pose, orientation, camera) by
    slerp; a resampled frame counts as detected only if both source frames were.
    """
    if times.dim() != 1 or times.numel() < 1:
        raise InputError("resample needs a 1D tensor of at least one time")
    last = track.num_frames - 1
    position = (times.to(track.device, torch.float32) * track.fps).clamp(0, last)
    lo = position.floor().long().clamp(max=last)
    hi = (lo + 1).clamp(max=last)
    w = position - lo.float()

    def lerp(x: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x.dim() - 1)
        return x[lo] + (x[hi] - x[lo]) * w.view(shape)

    def slerp(rotvec: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (rotvec.dim() - 2)
        return slerp_rotvec(rotvec[lo], rotvec[hi], w.view(shape).expand(rotvec[lo].shape[:-1]))

    cam_rotvec = roma.rotmat_to_rotvec(track.cam_R)
    changes = dict(
        pose=slerp(track.pose), global_orient=slerp(track.global_orient), translation=lerp(track.translation),
        expression=lerp(track.expression), focal=lerp(track.focal), cam_R=roma.rotvec_to_rotmat(slerp(cam_rotvec)),
        cam_t=lerp(track.cam_t), confidence=lerp(track.confidence), detected=track.detected[lo] & track.detected[hi],
    )
    if track.landmarks2d is not None:
        changes["landmarks2d"] = lerp(track.landmarks2d)
    if times.numel() > 1:
        step = float((times[1:] - times[:-1]).mean())
        if step > 0:
            changes["fps"] = 1.0 / step
    return track.replace(**changes)


def retime(track: EHMTrack, fps: float, frames: int | None = None, offset: float = 0.0) -> EHMTrack:
    """The track resampled to ``fps``, starting ``offset`` seconds into it (negative: holds its first frame)."""
    if not fps > 0:
        raise InputError(f"fps must be positive, got {fps}")
    if frames is None:
        span = (track.num_frames - 1) / track.fps - offset  # seconds from the start time to the last source frame
        frames = max(1, int(math.floor(span * fps + 1e-6)) + 1)
    times = offset + torch.arange(frames, dtype=torch.float64) / fps
    out = resample(track, times.float())
    return out.replace(fps=float(fps))
