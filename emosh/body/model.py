"""Backend-neutral Expressive Human Model (EHM) interface.

A backend maps (shape, motion) for B frames to a posed mesh in its own metric world frame (Z up for Anny,
Y up for SMPL-X). The camera is applied elsewhere (:mod:`emosh.body.camera`); the model never sees pixels.

Motion convention, shared by every backend:
    pose           [B, J, 3]  local axis-angle rotation of each articulated joint (root excluded)
    global_orient  [B, 3]     axis-angle rotation of the whole body about the model origin (the pelvis)
    translation    [B, 3]     metres, added after the global rotation
    expression     [B, E]     facial coefficients (Anny: 52 ARKit facial actions in [0, 1])
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import roma
import torch

from .kinematics import PosedBones, RestSkeleton


@dataclass
class BodyOutput:
    vertices: torch.Tensor  # [B, V, 3] metres, model world frame
    joints: torch.Tensor  # [B, K, 3] joint (bone head) positions, ordered like ``joint_labels``


Pair = tuple[str, str]  # (subject's left, subject's right)
Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Rig:
    """A skeleton's joints by role, for code that must know more than their names: the tracker's anatomical pose
    basis (hinge frames, which way a flexion bends) and the SMPL-24 slots of SCAIL's capsules. Entries are
    ``joint_labels``; pairs are (subject's left, subject's right)."""

    trunk: dict[str, float]  # spine, neck and head bones → pose-prior weight
    neck: str  # the bone whose head is SMPL's neck joint
    clavicle: Pair
    upper_arm: Pair  # its head is the shoulder
    forearm: Pair  # its head is the elbow
    wrist: Pair
    upper_leg: Pair  # its head is the hip joint
    shin: Pair  # its head is the knee
    foot: Pair  # its head is the ankle
    fingers: tuple[tuple[tuple[str, str, str], ...], tuple[tuple[str, str, str], ...]]  # per side: thumb → little
    forward: Vec3  # world direction the rest body faces
    palm: tuple[Vec3, Vec3]  # world direction each rest palm faces


class BodyModel(ABC):
    """What the tracker, retargeter, renderer and exporters need from a body model."""

    backend: str
    version: str
    shape_labels: list[str]  # names of the shape vector entries
    pose_labels: list[str]  # the J articulated joints of ``pose`` (root excluded)
    expression_labels: list[str]
    joint_labels: list[str]  # the K joints returned by ``forward`` (root first)
    joint_parents: list[int]  # parent index into ``joint_labels`` (-1 for the root); for BVH export
    up_axis: int  # world axis that points up in the rest pose (2 = Z for Anny, 1 = Y for SMPL-X)
    faces: torch.Tensor  # [F, 3] int64
    uvs: torch.Tensor  # [Vt, 2] float, texture coordinates in [0, 1]
    face_uvs: torch.Tensor  # [F, 3] int64 indices into ``uvs`` (seams are split)
    part_labels: torch.Tensor  # [V] int64 index into ``part_names``
    part_names: list[str]
    device: torch.device
    rig: Rig
    expression_kind: Literal["arkit", "flame"]  # ARKit: MediaPipe's blendshape scores are direct targets
    shape_range: tuple[float, float] | None = None  # bounds of every shape entry (None: unbounded)
    shape_scale: float = 1.0  # a shape entry's units per spread of bodies (Anny's phenotypes: 1; betas in σ: 4)
    expression_range: tuple[float, float] | None = None  # bounds of every expression coefficient

    @property
    def num_vertices(self) -> int:
        return int(self.part_labels.shape[0])

    def default_shape(self) -> torch.Tensor:
        """The average body (every phenotype at its mid value / zero betas)."""
        return torch.full((len(self.shape_labels),), self.shape_default_value, device=self.device)

    shape_default_value: float = 0.0

    @abstractmethod
    def forward(
        self,
        shape: torch.Tensor,
        pose: torch.Tensor,
        global_orient: torch.Tensor,
        translation: torch.Tensor,
        expression: torch.Tensor,
    ) -> BodyOutput:
        """``shape`` is [S] or [B, S] (a shared shape is computed once); the motion tensors are batched [B, ...]."""

    def __call__(self, *args, **kwargs) -> BodyOutput:
        return self.forward(*args, **kwargs)

    def rest(self, shape: torch.Tensor | None = None) -> BodyOutput:
        """Unposed (zero motion) body for one shape: the canonical surface used for semantic colours."""
        shape = self.default_shape() if shape is None else shape.to(self.device)
        zeros = self.zero_motion(1)
        return self.forward(shape, **zeros)

    def zero_motion(self, frames: int) -> dict[str, torch.Tensor]:
        z = dict(device=self.device, dtype=torch.float32)
        return dict(
            pose=torch.zeros(frames, len(self.pose_labels), 3, **z),
            global_orient=torch.zeros(frames, 3, **z),
            translation=torch.zeros(frames, 3, **z),
            expression=torch.zeros(frames, len(self.expression_labels), **z),
        )

    def surface_points(self, vertices: torch.Tensor, face_ids: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
        """Points given as (triangle, barycentric) on the posed mesh: [B, V, 3] → [B, N, 3]."""
        tri = self.faces[face_ids.to(self.device)]  # [N, 3]
        corners = vertices[:, tri]  # [B, N, 3, 3]
        return (corners * bary.to(vertices)[None, :, :, None]).sum(dim=2)

    def part_index(self, name: str) -> int:
        return self.part_names.index(name)

    # The skeleton behind ``forward``, for code that poses only a few points (the tracker's landmark skinning) or
    # needs the bones themselves (BVH export): both backends write their kinematics as one bone tree
    # (emosh.body.kinematics) and their facial coefficients as linear vertex offsets.
    @abstractmethod
    def rest_skeleton(self, shape: torch.Tensor) -> RestSkeleton:
        """The rest mesh and skeleton of ``shape`` [S] or [R, S]."""

    @abstractmethod
    def pose_bones(self, rest: RestSkeleton, pose: torch.Tensor, global_orient: torch.Tensor,
                   translation: torch.Tensor) -> PosedBones:
        """Bone rotations, joints and skinning transforms of B frames (see emosh.body.kinematics)."""

    @abstractmethod
    def skinning_weights(self, vertex_ids: torch.Tensor) -> torch.Tensor:
        """[M, J] dense skinning weights of the given vertices."""

    @property
    @abstractmethod
    def facial_blendshapes(self) -> torch.Tensor:
        """[E, V, 3] vertex offsets per unit of each expression coefficient."""


def apply_global(vertices: torch.Tensor, global_orient: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """x' = R(global_orient) x + t, batched over frames; works for any [B, N, 3] point set."""
    rot = roma.rotvec_to_rotmat(global_orient)  # [B, 3, 3]
    return vertices @ rot.transpose(1, 2) + translation[:, None, :]


def check_motion(model: BodyModel, pose: torch.Tensor, global_orient: torch.Tensor, translation: torch.Tensor,
                 expression: torch.Tensor) -> int:
    """Validate batched motion shapes against the model and return B (clear messages instead of shape errors)."""
    b = pose.shape[0]
    expected = {
        "pose": (pose, (b, len(model.pose_labels), 3)),
        "global_orient": (global_orient, (b, 3)),
        "translation": (translation, (b, 3)),
        "expression": (expression, (b, len(model.expression_labels))),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{model.backend} body model: {name} must have shape {shape}, got {tuple(tensor.shape)}")
    return b
