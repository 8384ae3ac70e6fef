"""Forward kinematics and skinning transforms of a bone tree whose poses are local rotations in each bone's own
reference frame (Anny's "local-ref" convention), written once for the full mesh, the tracker's landmark skinning
and the BVH exporter.

Steps, with D_c the bone's pose rotation, R_c its rest orientation, Q_c its reference (zero-pose) orientation and
h_c its rest head:
  1. bone rotation (relative to the zero pose):  G_root = R(global_orient) · Q_rootᵀ,  G_c = G_parent · D_c
  2. joint position:  j_root = translation,  j_c = j_parent + G_parent · o_c,  o_c = A_parent (h_c − h_parent)
  3. skinning transform:  x ↦ G_c A_c (x − h_c) + j_c,  A_c = Q_c R_cᵀ  (reference · rest⁻¹; A_root = I in step 2)
Working level by level on 3×3 rotations is several times faster than a generic chain of 4×4 transforms;
``tests/test_body.py`` checks the result against anny's own ``get_bone_transforms``.
"""
from __future__ import annotations

from dataclasses import dataclass

import roma
import torch


@dataclass
class RestSkeleton:
    """One body shape at rest (leading dim R = 1, or one per frame). vertices [R, V, 3], heads [R, J, 3],
    offsets [R, J, 3] (step 2's o), A [R, J, 3, 3], root [R, 3, 3] (Q_rootᵀ)."""

    vertices: torch.Tensor
    heads: torch.Tensor
    offsets: torch.Tensor
    A: torch.Tensor
    root: torch.Tensor


@dataclass
class PosedBones:
    """B posed frames: rotations [B, J, 3, 3] (G: each bone's world rotation relative to its zero pose, what a BVH
    channel holds), joints [B, J, 3] and the skinning transforms x ↦ skin_rotations · x + skin_translations."""

    rotations: torch.Tensor
    joints: torch.Tensor
    skin_rotations: torch.Tensor
    skin_translations: torch.Tensor

    def matrices(self) -> torch.Tensor:
        """[B, J, 4, 4] homogeneous skinning transforms."""
        b, j = self.joints.shape[:2]
        out = torch.zeros(b, j, 4, 4, dtype=self.joints.dtype, device=self.joints.device)
        out[..., :3, :3] = self.skin_rotations
        out[..., :3, 3] = self.skin_translations
        out[..., 3, 3] = 1.0
        return out


class BoneTree:
    """The bone hierarchy, grouped into levels (every parent of level d sits in level d − 1)."""

    def __init__(self, parents: list[int], device: torch.device):
        n = len(parents)
        depth = [0] * n
        for c, p in enumerate(parents):
            if p >= c:
                raise ValueError("bones must be listed after their parent")
            depth[c] = 0 if p < 0 else depth[p] + 1
        if depth.count(0) != 1 or parents[0] >= 0:
            raise ValueError("expected a single root bone at index 0")
        self.parents = torch.tensor(parents, device=device)
        self.levels = [torch.tensor([c for c in range(n) if depth[c] == d], device=device)
                       for d in range(1, max(depth) + 1)]
        chain = torch.cat([torch.zeros(1, dtype=torch.long, device=device)] + self.levels)
        self.order = torch.empty_like(chain)
        self.order[chain] = torch.arange(chain.numel(), device=device)  # chain order → bone order
        within = {0: 0}
        for idx in self.levels:
            for k, c in enumerate(idx.tolist()):
                within[c] = k
        self.parent_within = [torch.tensor([within[int(p)] for p in self.parents[idx].tolist()], device=device)
                              for idx in self.levels]

    def rest(self, vertices: torch.Tensor, rest_bone_poses: torch.Tensor,
             reference: torch.Tensor | None) -> RestSkeleton:
        """``vertices`` [R, V, 3], ``rest_bone_poses`` [R, J, 4, 4], ``reference`` [J, 3, 3] (None: the rest
        orientations are the zero pose) → the rest quantities of the module docstring."""
        rot, heads = rest_bone_poses[..., :3, :3], rest_bone_poses[..., :3, 3]
        ref = rot if reference is None else reference.to(rot)[None].expand_as(rot)
        A = ref @ rot.transpose(-1, -2)
        parent = self.parents.clamp(min=0)
        eye = torch.eye(3, dtype=A.dtype, device=A.device).expand(A.shape[0], 1, 3, 3)
        A_parent = torch.cat([eye, A[:, 1:]], 1)[:, parent]
        offsets = (A_parent @ (heads - heads[:, parent])[..., None])[..., 0]
        return RestSkeleton(vertices, heads, offsets, A, ref[:, 0].transpose(-1, -2))

    def pose(self, rest: RestSkeleton, pose: torch.Tensor, global_orient: torch.Tensor,
             translation: torch.Tensor) -> PosedBones:
        """Steps 1–3 for ``pose`` [B, J − 1, 3] axis-angle (root excluded), ``global_orient`` [B, 3],
        ``translation`` [B, 3]."""
        rots = roma.rotvec_to_rotmat(pose)  # [B, J-1, 3, 3]
        offsets = rest.offsets
        G = [roma.rotvec_to_rotmat(global_orient)[:, None] @ rest.root[:, None]]  # per level [B, n_level, 3, 3]
        Jp = [translation[:, None]]  # the root head is at the model origin
        for idx, par in zip(self.levels, self.parent_within):
            g_par = G[-1][:, par]
            Jp.append(Jp[-1][:, par] + (g_par @ offsets[:, idx, :, None])[..., 0])
            G.append(g_par @ rots[:, idx - 1])
        G, joints = torch.cat(G, 1)[:, self.order], torch.cat(Jp, 1)[:, self.order]
        skin_rot = G @ rest.A
        skin_trans = joints - (skin_rot @ rest.heads[..., None])[..., 0]
        return PosedBones(G, joints, skin_rot, skin_trans)
