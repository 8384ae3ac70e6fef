"""SMPL-X + FLAME backend (optional, licensed files supplied by the user): the EHM of GUAVA/EMOSH.

The FLAME head (shape β_f, expression ψ, jaw, eyes) replaces the SMPL-X head in the shaped template, aligned at
the eye-joint midpoint; one SMPL-X linear blend skinning then poses body and SMPL-X hands.

Files, looked up in ``<ComfyUI>/models/emosh/body/`` (or ``$EMOSH_MODELS_DIR/body``, or a CLI ``--body-dir``):
    SMPLX_NEUTRAL.npz            https://smpl-x.is.tue.mpg.de (SMPL-X v1.1)
    FLAME_NEUTRAL.pkl            https://flame.is.tue.mpg.de (FLAME 2020, generic_model.pkl renamed)
    flame_static_embedding.pkl   FLAME landmark embedding (same download)
    SMPL-X__FLAME_vertex_ids.npy SMPL-X ↔ FLAME vertex correspondence (SMPL-X download, "model transfer")
These formats need pickle; they are read only from the user's model folder, never from workflow inputs.

Shape = 10 SMPL-X betas + 10 FLAME betas. Pose joints (54): 21 body, jaw, left eye, right eye, 15 + 15 hand joints.
Expression = 50 FLAME coefficients. World frame: metres, Y up, the body faces +Z.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..paths import find_model_file
from .model import BodyModel, BodyOutput, apply_global, check_motion

REQUIRED_FILES = ("SMPLX_NEUTRAL.npz", "FLAME_NEUTRAL.pkl", "flame_static_embedding.pkl",
                  "SMPL-X__FLAME_vertex_ids.npy")
NUM_BETAS = 10
NUM_EXPRESSION = 50
_BODY_JOINTS = [
    "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle", "right_ankle", "spine3",
    "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist",
]
_FINGERS = [f"{f}{i}" for f in ("index", "middle", "pinky", "ring", "thumb") for i in (1, 2, 3)]
POSE_LABELS = (_BODY_JOINTS + ["jaw", "left_eye", "right_eye"]
               + [f"left_{f}" for f in _FINGERS] + [f"right_{f}" for f in _FINGERS])
PART_OF_JOINT = {  # dominant-joint → part name, same part vocabulary as the Anny backend
    "pelvis": "torso", "spine1": "torso", "spine2": "torso", "spine3": "torso", "left_collar": "torso",
    "right_collar": "torso", "neck": "neck", "head": "head", "jaw": "head", "left_eye": "head", "right_eye": "head",
    "left_hip": "upper_leg_l", "right_hip": "upper_leg_r", "left_knee": "lower_leg_l", "right_knee": "lower_leg_r",
    "left_ankle": "foot_l", "right_ankle": "foot_r", "left_foot": "foot_l", "right_foot": "foot_r",
    "left_shoulder": "upper_arm_l", "right_shoulder": "upper_arm_r", "left_elbow": "lower_arm_l",
    "right_elbow": "lower_arm_r", "left_wrist": "hand_l", "right_wrist": "hand_r",
}

_cache: dict[tuple[str, str], "SmplxFlameBody"] = {}
_cache_lock = threading.Lock()


def locate_files(extra_dirs: Iterable[str] = ()) -> dict[str, Path]:
    """Every required file, or MissingModelError naming the folders and the file names."""
    extra_dirs = list(extra_dirs)
    return {name: find_model_file("body", [name], extra_dirs) for name in REQUIRED_FILES}


class SmplxFlameBody(BodyModel):
    backend = "smplx_flame"
    shape_default_value = 0.0

    def __init__(self, files: dict[str, Path], device: str | torch.device = "cpu"):
        import smplx

        self.device = torch.device(device)
        self.version = f"smplx-{getattr(smplx, '__version__', '0.1')}"
        folder = str(files["SMPLX_NEUTRAL.npz"].parent)
        self._smplx = smplx.SMPLX(folder, gender="neutral", ext="npz", use_pca=False, num_betas=NUM_BETAS,
                                  num_expression_coeffs=10, flat_hand_mean=True).to(self.device)
        self._flame = smplx.FLAME(str(files["FLAME_NEUTRAL.pkl"].parent), gender="neutral", num_betas=NUM_BETAS,
                                  num_expression_coeffs=NUM_EXPRESSION).to(self.device)
        ids = np.load(files["SMPL-X__FLAME_vertex_ids.npy"], allow_pickle=False)
        self._head_ids = torch.as_tensor(ids.astype(np.int64), device=self.device)
        s = self._smplx
        self.shape_labels = [f"body_beta{i}" for i in range(NUM_BETAS)] + [f"face_beta{i}" for i in range(NUM_BETAS)]
        self.pose_labels = list(POSE_LABELS)
        self.expression_labels = [f"flame_exp{i}" for i in range(NUM_EXPRESSION)]
        self.joint_labels = ["pelvis"] + self.pose_labels
        self.joint_parents = [int(p) for p in s.parents[: len(self.joint_labels)].tolist()]
        self.up_axis = 1
        self.faces = torch.as_tensor(s.faces.astype(np.int64), device=self.device)
        self.uvs, self.face_uvs = self._vertex_uvs(s)
        dominant = s.lbs_weights.argmax(1).clamp(max=len(self.joint_labels) - 1)
        parts = ["head", "neck", "torso", "upper_arm_l", "lower_arm_l", "hand_l", "upper_arm_r", "lower_arm_r",
                 "hand_r", "upper_leg_l", "lower_leg_l", "foot_l", "upper_leg_r", "lower_leg_r", "foot_r"]
        joint_part = [parts.index(PART_OF_JOINT.get(j, "hand_l" if j.startswith("left_") else "hand_r"))
                      for j in self.joint_labels]
        self.part_names = parts
        self.part_labels = torch.as_tensor(joint_part, device=self.device)[dominant]

    def _vertex_uvs(self, s) -> tuple[torch.Tensor, torch.Tensor]:
        """SMPL-X ships no UVs in the .npz: use a cylindrical unwrap so texture code still has coordinates."""
        v = s.v_template
        theta = torch.atan2(v[:, 0], v[:, 2])
        height = (v[:, 1] - v[:, 1].min()) / (v[:, 1].max() - v[:, 1].min())
        uv = torch.stack([theta / (2 * np.pi) + 0.5, height], 1)
        return uv.to(self.device, torch.float32), self.faces.clone()

    def forward(self, shape, pose, global_orient, translation, expression) -> BodyOutput:
        from smplx.lbs import blend_shapes, lbs, vertices2joints

        b = check_motion(self, pose, global_orient, translation, expression)
        shape = shape.to(self.device, torch.float32)
        shape = (shape[None] if shape.dim() == 1 else shape).expand(b, -1)
        body_betas, face_betas = shape[:, :NUM_BETAS], shape[:, NUM_BETAS:]
        pose = pose.to(self.device)
        jaw, leye, reye = pose[:, 21], pose[:, 22], pose[:, 23]
        s, f = self._smplx, self._flame
        head = f(betas=face_betas, expression=expression.to(self.device), jaw_pose=jaw, leye_pose=leye,
                 reye_pose=reye, global_orient=torch.zeros_like(jaw), neck_pose=torch.zeros_like(jaw)).vertices
        template = s.v_template[None] + blend_shapes(body_betas, s.shapedirs[..., :NUM_BETAS])
        eyes_body = vertices2joints(s.J_regressor, template)[:, 23:25].mean(1)
        eyes_flame = vertices2joints(f.J_regressor, head)[:, 3:5].mean(1)
        template = template.clone()
        template[:, self._head_ids] = head + (eyes_body - eyes_flame)[:, None]
        full_pose = torch.cat([torch.zeros_like(jaw)[:, None], pose[:, :21], torch.zeros_like(pose[:, 21:24]),
                               pose[:, 24:]], 1).reshape(b, -1)
        verts, joints = lbs(torch.zeros(b, 1, device=self.device), full_pose, template,
                            s.shapedirs[..., :1], s.posedirs, s.J_regressor, s.parents, s.lbs_weights)
        joints = joints[:, : len(self.joint_labels)]
        return BodyOutput(vertices=apply_global(verts, global_orient.to(self.device), translation.to(self.device)),
                          joints=apply_global(joints, global_orient.to(self.device), translation.to(self.device)))


def smplx_flame_body(device: str | torch.device = "cpu", extra_dirs: Iterable[str] = ()) -> SmplxFlameBody:
    files = locate_files(extra_dirs)
    key = (str(files["SMPLX_NEUTRAL.npz"].resolve()), str(torch.device(device)))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = SmplxFlameBody(files, device)
        return _cache[key]
