"""MediaPipe Holistic landmarks ⇄ Anny mesh: where each of the 553 landmarks sits on the body.

Each landmark is either a *joint point* — a blend ``(1 - w) · J[a] + w · J[b]`` of two Anny bone heads (MediaPipe's
shoulders, elbows, hips, knees, finger joints are joint centres inside the body) — or a *surface point* — a triangle
of the mesh plus barycentric coordinates (nose, eyes, ears, mouth, heels, toes, fingertips and the 478 face-mesh
points). The table is produced by ``scripts/build_correspondence.py`` (the face part by rendering Anny's head and
running MediaPipe face_mesh on the renders) and stored in ``data/anny_landmarks.npz`` with bone *names*, so it
survives a reordering of Anny's bones. The tracker fits through it, and the renderer draws keypoints from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .model import BodyModel, BodyOutput
from .track import LANDMARK_GROUPS, NUM_LANDMARKS

DATA_FILE = Path(__file__).with_name("data") / "anny_landmarks.npz"

@dataclass(frozen=True)
class LandmarkTable:
    """Per landmark (553, MediaPipe Holistic layout, see ``emosh.body.track.LANDMARK_GROUPS``).

    is_joint [N] bool; joint_a, joint_b [N] int64 indices into ``model.joint_labels`` and joint_w [N] float (blend
    toward b) for joint points; face_id [N] int64 and bary [N, 3] float for surface points (-1 / zeros otherwise).
    residual_px / residual_mm: registration residual of the face part (from the build script).
    """

    is_joint: torch.Tensor
    joint_a: torch.Tensor
    joint_b: torch.Tensor
    joint_w: torch.Tensor
    face_id: torch.Tensor
    bary: torch.Tensor
    residual_px: float
    residual_mm: float

    def to(self, device: torch.device | str) -> "LandmarkTable":
        return LandmarkTable(*(t.to(device) for t in (self.is_joint, self.joint_a, self.joint_b, self.joint_w,
                                                      self.face_id, self.bary)),
                             residual_px=self.residual_px, residual_mm=self.residual_mm)

    def validate(self, model: BodyModel) -> None:
        """Raise ValueError when an index is out of range or a barycentric is not a convex combination."""
        n_joints, n_faces = len(model.joint_labels), int(model.faces.shape[0])
        j, s = self.is_joint, ~self.is_joint
        if self.is_joint.shape != (NUM_LANDMARKS,) or self.bary.shape != (NUM_LANDMARKS, 3):
            raise ValueError("landmark table must describe exactly 553 landmarks")
        if j.any() and not (((self.joint_a[j] >= 0) & (self.joint_a[j] < n_joints)).all()
                            and ((self.joint_b[j] >= 0) & (self.joint_b[j] < n_joints)).all()
                            and ((self.joint_w[j] >= 0) & (self.joint_w[j] <= 1)).all()):
            raise ValueError("landmark table: joint index or blend weight out of range")
        if s.any():
            if not ((self.face_id[s] >= 0) & (self.face_id[s] < n_faces)).all():
                raise ValueError("landmark table: face index out of range")
            bary = self.bary[s]
            if (bary < -1e-6).any() or not torch.allclose(bary.sum(1), torch.ones_like(bary[:, 0]), atol=1e-5):
                raise ValueError("landmark table: barycentric coordinates must be >= 0 and sum to 1")


_cache: dict[tuple[str, str], LandmarkTable] = {}


def landmark_table(model: BodyModel) -> LandmarkTable:
    """The MediaPipe⇄mesh table for ``model`` on its device, made once per model: Anny's ships with the package,
    any other model's is transferred from it at first use (:mod:`emosh.body.landmark_transfer`)."""
    key = (model.backend, model.version, str(model.device), id(model))
    if key not in _cache:
        if model.backend == "anny":
            table = load_table(DATA_FILE, model)
        else:
            from .anny_backend import anny_body
            from .landmark_transfer import transfer_table

            table = transfer_table(model, anny_body(model.device))
        _cache[key] = table.to(model.device)
    return _cache[key]


def load_table(path: Path, model: BodyModel) -> LandmarkTable:
    """Read a table written by ``scripts/build_correspondence.py``; bone names are resolved against ``model``."""
    with np.load(path, allow_pickle=False) as data:
        names = [str(n) for n in data["joint_names"]]
        missing = [n for n in names if n not in model.joint_labels]
        if missing:
            raise ValueError(f"{path}: bones {missing} are not in the {model.backend} rig")
        lookup = np.array([model.joint_labels.index(n) for n in names], dtype=np.int64)
        ja, jb = data["joint_a"].astype(np.int64), data["joint_b"].astype(np.int64)
        joint_a = torch.from_numpy(np.where(ja >= 0, lookup[np.maximum(ja, 0)], -1))
        joint_b = torch.from_numpy(np.where(jb >= 0, lookup[np.maximum(jb, 0)], -1))
        table = LandmarkTable(
            is_joint=torch.from_numpy(data["joint_a"] >= 0),
            joint_a=joint_a,
            joint_b=joint_b,
            joint_w=torch.from_numpy(data["joint_w"].astype(np.float32)),
            face_id=torch.from_numpy(data["face_id"].astype(np.int64)),
            bary=torch.from_numpy(data["bary"].astype(np.float32)),
            residual_px=float(data["residual_px"]),
            residual_mm=float(data["residual_mm"]),
        )
    table.validate(model)
    return table


def table_points(model: BodyModel, table: LandmarkTable, vertices: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
    """Landmark positions [B, 553, 3] from posed vertices [B, V, 3] and joints [B, K, 3] (any subset of frames)."""
    t = table.to(vertices.device) if table.bary.device != vertices.device else table
    out = vertices.new_zeros(vertices.shape[0], NUM_LANDMARKS, 3)
    j = torch.nonzero(t.is_joint).squeeze(1)
    w = t.joint_w[j].to(joints)[None, :, None]
    out[:, j] = (1 - w) * joints[:, t.joint_a[j]] + w * joints[:, t.joint_b[j]]
    s = torch.nonzero(~t.is_joint).squeeze(1)
    out[:, s] = model.surface_points(vertices, t.face_id[s], t.bary[s])
    return out


def mesh_landmarks(model: BodyModel, output: BodyOutput) -> torch.Tensor:
    """[B, 553, 3] positions of the MediaPipe landmarks on a posed body (model world frame, metres)."""
    return table_points(model, landmark_table(model), output.vertices, output.joints)


def group_slice(name: str) -> slice:
    """Slice of a landmark group (``body``, ``left_hand``, ``right_hand``, ``face``) in the 553 layout."""
    start, stop = LANDMARK_GROUPS[name]
    return slice(start, stop)
