"""The project's one keypoint table: the MediaPipe-553 landmark layout, its mappings to OpenPose/DWPose sets,
the face contours drawn by the hybrid control signal, and the OpenPose/DWPose colours.

Layout of the 553 points (``emosh.body.track.LANDMARK_GROUPS``): MediaPipe Pose 33 body points (0-32), left hand
21 (33-53), right hand 21 (54-74), FaceMesh 478 incl. irises (75-552). Left/right are the subject's.
Drawing colours are RGB exactly as the upstream OpenPose/DWPose code writes them
(see ``shared/docs/pose-drawing.md`` §1); channel swaps for particular consumers happen in ``emosh.render.draw``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .body.track import LANDMARK_GROUPS, NUM_LANDMARKS

BODY_NAMES = [
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index",
]
HAND_NAMES = [
    "wrist", "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip", "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip", "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "pinky_mcp", "pinky_pip", "pinky_dip", "pinky_tip",
]
LEFT_HAND = LANDMARK_GROUPS["left_hand"][0]
RIGHT_HAND = LANDMARK_GROUPS["right_hand"][0]
FACE = LANDMARK_GROUPS["face"][0]


def landmark_names() -> list[str]:
    """Names of all 553 landmarks in layout order (``face_123`` for FaceMesh vertex 123)."""
    names = list(BODY_NAMES)
    names += [f"left_hand_{n}" for n in HAND_NAMES] + [f"right_hand_{n}" for n in HAND_NAMES]
    names += [f"face_{i}" for i in range(NUM_LANDMARKS - FACE)]
    return names


# ---------------------------------------------------------------- OpenPose-18 / Body-20 (Wan-Animate, UniAnimate)
OPENPOSE_NAMES = ["nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
                  "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
                  "right_eye", "left_eye", "right_ear", "left_ear", "left_toe", "right_toe"]
# Each OpenPose point is the mean of these MediaPipe points (neck = shoulder midpoint as DWPose defines it;
# toes ≈ MediaPipe foot index, which is the only MediaPipe toe point).
OPENPOSE_FROM_MEDIAPIPE: list[tuple[int, ...]] = [
    (0,), (11, 12), (12,), (14,), (16,), (11,), (13,), (15,), (24,), (26,), (28,), (23,), (25,), (27,),
    (5,), (2,), (8,), (7,), (31,), (32,),
]
# Limbs 0-16 are the OpenPose-18 limbs in upstream order (limb i is coloured OPENPOSE_COLORS[i]); 17-18 the toes.
OPENPOSE_LIMBS: list[tuple[int, int]] = [
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (13, 18), (10, 19),
]
OPENPOSE_COLORS: list[tuple[int, int, int]] = [
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
]
OPENPOSE_HEAD_LIMBS = (12, 13, 14, 15, 16)  # neck-nose, nose-eyes, eyes-ears
OPENPOSE_HEAD_JOINTS = (0, 14, 15, 16, 17)
LIMB_DIM = 0.6  # limbs are drawn at 0.6 × the palette colour, joints at full colour
# Toe extension colours per consumer: (limb LAnkle-LToe, limb RAnkle-RToe, joint LToe, joint RToe), undimmed.
TOE_COLORS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "wan": ((255, 0, 85), (200, 200, 0), (200, 200, 0), (100, 100, 0)),
    "unianimate": ((255, 0, 85), (170, 255, 255), (170, 255, 255), (255, 255, 0)),
}

# ---------------------------------------------------------------- hands (MediaPipe Hands = DWPose hand order)
HAND_BONES: list[tuple[int, int]] = [
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
    (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
]
HAND_BONE_COLORS: list[tuple[int, int, int]] = [  # HSV(e/20, 1, 1) as uint8, bone e
    (255, 0, 0), (255, 77, 0), (255, 153, 0), (255, 229, 0), (204, 255, 0), (128, 255, 0), (51, 255, 0),
    (0, 255, 25), (0, 255, 102), (0, 255, 179), (0, 255, 255), (0, 178, 255), (0, 102, 255), (0, 25, 255),
    (51, 0, 255), (128, 0, 255), (204, 0, 255), (255, 0, 230), (255, 0, 153), (255, 0, 77),
]
HAND_JOINT_COLOR = (0, 0, 255)

# ---------------------------------------------------------------- face (FaceMesh-478 indices, add FACE for 553)
# Polylines of the hybrid signal, subject's left/right. Closed contours repeat their first point at the end.
FACE_CONTOURS: dict[str, list[list[int]]] = {
    "right_eyebrow": [[46, 53, 52, 65, 55], [70, 63, 105, 66, 107]],
    "left_eyebrow": [[276, 283, 282, 295, 285], [300, 293, 334, 296, 336]],
    "right_eye": [[33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7, 33]],
    "left_eye": [[263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249, 263]],
    "outer_lips": [[61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146,
                    61]],
    "inner_lips": [[78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95,
                    78]],
}
IRIS_CENTRE = {"right": 468, "left": 473}
IRIS_RING = {"right": [469, 470, 471, 472], "left": [474, 475, 476, 477]}
# Hybrid face colours (RGB): like the paper figure, the subject's right features blue, left red/orange, lips white.
FACE_COLORS: dict[str, tuple[int, int, int]] = {
    "right_eyebrow": (40, 60, 255), "left_eyebrow": (255, 40, 40),
    "right_eye": (0, 120, 255), "left_eye": (255, 140, 0),
    "outer_lips": (255, 255, 255), "inner_lips": (255, 255, 255),
    "right_pupil": (20, 20, 120), "left_pupil": (120, 40, 0),
}

# iBUG-68 face points (DWPose face dots) from FaceMesh; tuples are averaged.
FACE68_FROM_MEDIAPIPE: list[tuple[int, ...]] = [
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,), (400,), (379,), (365,),
    (397, 288), (361,), (323,), (454,), (356,), (70,), (63,), (105,), (66,), (107,), (336,), (296,), (334,),
    (293,), (300,), (168, 6), (197, 195), (5,), (4,), (75,), (97,), (2,), (326,), (305,), (33,), (160,), (158,),
    (133,), (153,), (144,), (362,), (385,), (387,), (263,), (373,), (380,), (61,), (39,), (37,), (0,), (267,),
    (269,), (291,), (321,), (314,), (17,), (84,), (91,), (78,), (82,), (13,), (312,), (308,), (317,), (14,),
    (87,),
]

# ---------------------------------------------------------------- body parts that own each body landmark
# A joint-like body landmark seen through the surface of one of its own parts is visible (the surface is the limb
# around it); behind any other part it is occluded. Parts are names from the body model's ``part_names``.
BODY_OWN_PARTS: dict[int, tuple[str, ...]] = {
    11: ("torso", "upper_arm_l"), 12: ("torso", "upper_arm_r"),
    13: ("upper_arm_l", "lower_arm_l"), 14: ("upper_arm_r", "lower_arm_r"),
    15: ("lower_arm_l", "hand_l"), 16: ("lower_arm_r", "hand_r"),
    17: ("hand_l",), 18: ("hand_r",), 19: ("hand_l",), 20: ("hand_r",), 21: ("hand_l",), 22: ("hand_r",),
    23: ("torso", "upper_leg_l"), 24: ("torso", "upper_leg_r"),
    25: ("upper_leg_l", "lower_leg_l"), 26: ("upper_leg_r", "lower_leg_r"),
    27: ("lower_leg_l", "foot_l"), 28: ("lower_leg_r", "foot_r"),
    29: ("foot_l",), 30: ("foot_r",), 31: ("foot_l",), 32: ("foot_r",),
}


@lru_cache(maxsize=None)
def _table(name: str, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded index [M, K] and averaging weight [M, K] arrays of a mapping table (built once)."""
    table = {"openpose": OPENPOSE_FROM_MEDIAPIPE, "face68": FACE68_FROM_MEDIAPIPE}[name]
    width = max(len(t) for t in table)
    idx = np.array([list(t) + [t[-1]] * (width - len(t)) for t in table], dtype=np.int64) + offset
    weight = np.array([[1.0 / len(t)] * len(t) + [0.0] * (width - len(t)) for t in table], dtype=np.float32)
    return idx, weight


def _gather_mean(points: torch.Tensor, name: str, offset: int = 0) -> torch.Tensor:
    """Average groups of points [..., N, D] → [..., M, D] (one vectorised gather)."""
    idx, weight = _table(name, offset)
    idx_t = torch.from_numpy(idx).to(points.device)
    weight_t = torch.from_numpy(weight).to(device=points.device, dtype=points.dtype)
    return (points[..., idx_t, :] * weight_t[..., None]).sum(dim=-2)


def _gather_all(visible: torch.Tensor, name: str, offset: int = 0) -> torch.Tensor:
    """A mapped point is visible only when every source point is (DWPose's neck rule)."""
    idx, _ = _table(name, offset)
    return visible[..., torch.from_numpy(idx).to(visible.device)].all(dim=-1)


def _gather_mean_score(visible: torch.Tensor, name: str, offset: int = 0) -> torch.Tensor:
    """A mapped point is visible when the mean of its sources' 0/1 scores reaches 0.5 (Wan-Animate's neck rule:
    the neck takes the mean shoulder score, so one visible shoulder is enough)."""
    scores = _gather_mean(visible.float()[..., None], name, offset)[..., 0]
    return scores >= 0.5


NECK_RULES = ("both", "mean")  # "both": DWPose / UniAnimate; "mean": Wan-Animate


def to_openpose(points: torch.Tensor, visible: torch.Tensor,
                neck_rule: str = "both") -> tuple[torch.Tensor, torch.Tensor]:
    """553-layout points [..., 553, D] + visibility [..., 553] → Body-20 points [..., 20, D] and visibility.

    ``neck_rule`` decides when an averaged point (the neck) is visible: "both" sources (DWPose) or a mean score
    of at least 0.5 (Wan-Animate's ``AAPoseMeta``, which averages the shoulders' scores).
    """
    if neck_rule not in NECK_RULES:
        raise ValueError(f"unknown neck rule {neck_rule!r}; choose from {NECK_RULES}")
    gather = _gather_all if neck_rule == "both" else _gather_mean_score
    return _gather_mean(points, "openpose"), gather(visible, "openpose")


def to_face68(points: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """553-layout points → iBUG-68 face points [..., 68, D] and visibility."""
    return _gather_mean(points, "face68", FACE), _gather_all(visible, "face68", FACE)
