"""Artist edits of a tracked performance (Track Edit) and mixing parts of several performances (Track Mix).

Everything works on ``EHMTrack`` values and returns new tracks; body-model specifics (which pose rows are fingers,
which facial coefficients are the jaw) come from the model's own labels, so both backends are handled by one code
path. Rotations are blended on the rotation manifold (roma), never by averaging axis-angle vectors.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from .body.camera import CameraKey, apply_camera_keys
from .body.joints import eye_joints, expression_groups, hand_joints, head_joints, jaw_joints
from .body.model import BodyModel
from .body.retime import retime
from .body.track import LANDMARK_GROUPS, EHMTrack
from .errors import InputError

FACE_PARTS = ("expression", "jaw", "eyes", "head")


# ---------------------------------------------------------------------------------------------- Track Edit
def apply_shape_offsets(track: EHMTrack, model: BodyModel, offsets: dict[str, float]) -> EHMTrack:
    """Add ``offsets`` to the named shape entries (clamped to the model's shape range: Anny's phenotypes to [0, 1])."""
    active = {k: float(v) for k, v in offsets.items() if v != 0.0}
    if not active:
        return track
    unknown = [k for k in active if k not in model.shape_labels]
    if unknown:
        raise InputError(f"The {model.backend} body model has no shape sliders {unknown}; its shape entries are "
                         f"{model.shape_labels[:8]}{'...' if len(model.shape_labels) > 8 else ''}")
    shape = track.shape.clone()
    for name, delta in active.items():
        shape[model.shape_labels.index(name)] += delta
    if model.shape_range is not None:
        shape = shape.clamp(*model.shape_range)
    return track.replace(shape=shape)


def edit_track(track: EHMTrack, model: BodyModel, *, expression_strength: float = 1.0, hand_strength: float = 1.0,
               start: int = 0, stop: int | None = None, camera_keys: Sequence[CameraKey] = (),
               shape_offsets: dict[str, float] | None = None) -> EHMTrack:
    """Track Edit: frame range, expression and finger strength, camera keyframes (in output frames), shape sliders.

    Strength 0 gives a neutral face / relaxed rest hands, 1 the tracked performance, above 1 exaggerates it.
    """
    track.check_backend(model.backend)
    if not 0 <= start < track.num_frames:
        raise InputError(f"start frame {start} is outside the track's {track.num_frames} frames")
    stop = track.num_frames if stop is None or stop < 0 else min(stop, track.num_frames)
    if stop <= start:
        raise InputError(f"end frame {stop} must be after start frame {start}")
    if expression_strength < 0 or hand_strength < 0:
        raise InputError("expression and hand strength must be >= 0")
    out = track.frames(start, stop)
    changes = {}
    if expression_strength != 1.0:
        expression = out.expression * expression_strength
        bounds = model.expression_range
        changes["expression"] = expression if bounds is None else expression.clamp(*bounds)
    if hand_strength != 1.0:
        pose = out.pose.clone()
        hands = hand_joints(model)
        pose[:, hands] = pose[:, hands] * hand_strength  # angle scaled about the rest pose (0 = relaxed hands)
        changes["pose"] = pose
    if changes:
        out = out.replace(**changes)
    out = apply_camera_keys(out, camera_keys)
    out = apply_shape_offsets(out, model, shape_offsets or {})
    return out.replace(meta={**out.meta, "edit": f"frames {start}:{stop}, expression x{expression_strength}, "
                                               f"hands x{hand_strength}, {len(camera_keys)} camera keys"})


# ---------------------------------------------------------------------------------------------- Track Mix
def mix_tracks(model: BodyModel, body: EHMTrack, hands: EHMTrack | None = None, face: EHMTrack | None = None, *,
               hands_offset: float = 0.0, face_offset: float = 0.0, face_parts: Iterable[str] = FACE_PARTS,
               fps: float | None = None) -> EHMTrack:
    """Body (and camera, shape) from ``body``, fingers and wrists from ``hands``, the chosen ``face_parts`` from
    ``face``: each source is resampled onto the output timeline, ``*_offset`` seconds into the source.

    The output has ``body``'s length and its fps (or ``fps`` when given). Raw 2D detections are dropped because they
    no longer describe one video; confidences are taken per landmark group from the track that supplied it.
    """
    face_parts = tuple(face_parts)
    unknown = set(face_parts) - set(FACE_PARTS)
    if unknown:
        raise InputError(f"Unknown face parts {sorted(unknown)}; choose from {FACE_PARTS}")
    for name, t in (("body", body), ("hands", hands), ("face", face)):
        if t is not None:
            t.check_backend(model.backend)
            if t.pose.shape[1:] != body.pose.shape[1:] or t.expression.shape[1:] != body.expression.shape[1:]:
                raise InputError(f"The {name} track's pose/expression layout differs from the body track's")
    out = body if fps is None or fps == body.fps else retime(body, fps)
    device = out.device
    frames, rate = out.num_frames, out.fps
    pose, expression, confidence = out.pose.clone(), out.expression.clone(), out.confidence.clone()
    detected = out.detected.clone()
    sources = []
    if hands is not None:
        src = retime(hands.to(device), rate, frames, hands_offset)
        idx = hand_joints(model)
        pose[:, idx] = src.pose[:, idx]
        for group in ("left_hand", "right_hand"):
            a, b = LANDMARK_GROUPS[group]
            confidence[:, a:b] = src.confidence[:, a:b]
        detected &= src.detected
        sources.append(f"hands from {hands.meta.get('source', 'track')} at {hands_offset:+.2f}s")
    if face is not None and face_parts:
        src = retime(face.to(device), rate, frames, face_offset)
        groups = expression_groups(model)
        joints = {"jaw": jaw_joints(model), "eyes": eye_joints(model), "head": head_joints(model), "expression": []}
        for part in face_parts:
            coeffs = groups.get(part, [])
            expression[:, coeffs] = src.expression[:, coeffs]
            pose[:, joints[part]] = src.pose[:, joints[part]]
        a, b = LANDMARK_GROUPS["face"]
        confidence[:, a:b] = src.confidence[:, a:b]
        detected &= src.detected
        sources.append(f"face ({', '.join(face_parts)}) from {face.meta.get('source', 'track')} at {face_offset:+.2f}s")
    return out.replace(pose=pose, expression=expression, confidence=confidence, detected=detected, landmarks2d=None,
                       meta={**out.meta, "mix": "; ".join(sources) or "body only"})
