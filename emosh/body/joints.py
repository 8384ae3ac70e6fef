"""Joint groups and rotation blending shared by the tracker, retarget and Track Edit / Mix.

Groups come from the body model's own labels (Anny names end in .L/.R, SMPL-X names start with left_/right_;
ARKit facial actions vs FLAME's plain expression coefficients), so every backend is handled by one code path.
Rotations are blended on the rotation manifold (roma), never by averaging axis-angle vectors.
"""
from __future__ import annotations

import roma
import torch

from .model import BodyModel

_HAND_WORDS = ("finger", "metacarpal", "wrist", "thumb", "index", "middle", "ring", "pinky")
_HEAD_WORDS = ("neck", "head")
_LIMB_WORDS = {
    "arm": ("shoulder", "upperarm", "lowerarm", "elbow") + _HAND_WORDS,
    "leg": ("upperleg", "lowerleg", "hip", "knee", "ankle", "foot", "toe"),
}


# ---------------------------------------------------------------------------------------------- label groups
def hand_joints(model: BodyModel) -> list[int]:
    """Pose rows of the wrists and every finger joint (both hands)."""
    return [i for i, name in enumerate(model.pose_labels) if any(w in name.lower() for w in _HAND_WORDS)]


def head_joints(model: BodyModel) -> list[int]:
    """Pose rows that turn the head relative to the torso (neck chain + head)."""
    return [i for i, name in enumerate(model.pose_labels) if any(name.lower().startswith(w) for w in _HEAD_WORDS)]


def limb_joints(model: BodyModel, limb: str, side: str) -> list[int]:
    """Pose rows of one arm (shoulder to fingertips) or leg (hip to toes); ``side`` is the subject's, "l" or "r"
    (Anny names end in .L/.R, SMPL-X names start with left_/right_)."""
    prefix = {"l": "left_", "r": "right_"}[side]
    return [i for i, name in enumerate(model.pose_labels)
            if (name.lower().endswith(f".{side}") or name.lower().startswith(prefix))
            and any(word in name.lower() for word in _LIMB_WORDS[limb])]


def eye_joints(model: BodyModel) -> list[int]:
    return [i for i, name in enumerate(model.pose_labels) if "eye" in name.lower()]


def jaw_joints(model: BodyModel) -> list[int]:
    return [i for i, name in enumerate(model.pose_labels) if "jaw" in name.lower()]


def expression_groups(model: BodyModel) -> dict[str, list[int]]:
    """Facial coefficients split into jaw, eye gaze and the rest (ARKit names; FLAME's are all "expression")."""
    jaw, eyes, rest = [], [], []
    for i, name in enumerate(model.expression_labels):
        if name.startswith("jaw"):
            jaw.append(i)
        elif name.startswith("eyeLook"):
            eyes.append(i)
        else:
            rest.append(i)
    return {"jaw": jaw, "eyes": eyes, "expression": rest}


# ---------------------------------------------------------------------------------------------- rotation helpers
def slerp_rotvec(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-element geodesic interpolation a→b; ``weight`` broadcasts over the leading dimensions of a [..., 3]."""
    delta = roma.rotvec_composition([roma.rotvec_inverse(a), b])
    return roma.rotvec_composition([a, delta * weight[..., None]])
