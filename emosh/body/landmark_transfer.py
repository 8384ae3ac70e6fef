"""The MediaPipe landmark table of another body model, transferred from Anny's at first use.

Anny's table (``data/anny_landmarks.npz``) was registered against MediaPipe itself. A model whose files the user
supplies (SMPL-X) gets its table from the user's own mesh, never from a download:
  * joint points keep their blend weight; their two Anny bones become the target's joints of the same role
    (:data:`SMPLX_FROM_ANNY`);
  * a surface point is carried from Anny's average body into the target's rest pose by the similarity transform
    that maps its bone's neighbourhood (the bone's head, its parent's and children's heads, and a point in front)
    onto the target's, then snapped to the nearest target triangle of the same body region. The face points share
    one transform fitted on head, neck and eye joints, so the 478 face-mesh points keep their layout.
"""
from __future__ import annotations

import roma
import torch

from .landmarks import DATA_FILE, LandmarkTable, load_table, table_points
from .model import BodyModel

# Anny bone → SMPL-X joint of the same role (bones absent here take their nearest listed ancestor's joint).
SMPLX_FROM_ANNY: dict[str, str] = {
    "root": "pelvis", "spine04": "spine1", "spine02": "spine2", "spine01": "spine3", "neck01": "neck", "head": "head",
    "eye.L": "left_eye", "eye.R": "right_eye",
    **{f"{a}.{s}": f"{side}_{b}" for s, side in (("L", "left"), ("R", "right")) for a, b in (
        ("clavicle", "collar"), ("upperarm01", "shoulder"), ("lowerarm01", "elbow"), ("wrist", "wrist"),
        ("upperleg01", "hip"), ("lowerleg01", "knee"), ("foot", "ankle"), ("toe3-1", "foot"))},
    **{f"finger{d}-{k}.{s}": f"{side}_{digit}{k}" for s, side in (("L", "left"), ("R", "right"))
       for d, digit in enumerate(("thumb", "index", "middle", "ring", "pinky"), start=1) for k in (1, 2, 3)},
}
_HEAD_REGION = ("head", "jaw", "left_eye", "right_eye")  # face points all move with the head's transform


def anny_joint_map(anny: BodyModel, labels: list[str]) -> torch.Tensor:
    """[K_anny] index into the target's joint ``labels`` for every Anny bone (unlisted bones: nearest listed ancestor)."""
    out = []
    for k, name in enumerate(anny.joint_labels):
        while name not in SMPLX_FROM_ANNY:
            k = anny.joint_parents[k]
            name = anny.joint_labels[k]
        out.append(labels.index(SMPLX_FROM_ANNY[name]))
    return torch.tensor(out)


def _similarity(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R, s, t) minimising Σ |s R src + t − dst|² over point pairs [N, 3] (Umeyama, roma's)."""
    rot, t, scale = roma.rigid_points_registration(src[None], dst[None], compute_scaling=True)
    return rot[0], scale[0], t[0]


class _Correspondence:
    """Joint positions of both skeletons by the target's joint ids (Anny: the head of the listed bone)."""

    def __init__(self, anny: BodyModel, target: BodyModel, anny_joints: torch.Tensor, target_joints: torch.Tensor):
        self.target = target
        self.anny_forward = anny_joints.new_tensor(anny.rig.forward)
        self.target_forward = target_joints.new_tensor(target.rig.forward)
        self.src = {target.joint_labels.index(t): anny_joints[anny.joint_labels.index(a)]
                    for a, t in SMPLX_FROM_ANNY.items()}
        self.dst = target_joints

    def neighbourhood(self, joint: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The joint's head, its parent's and children's heads and a point in front of it at the bones' mean
        length, on each skeleton: ([N, 3], [N, 3])."""
        parents = self.target.joint_parents
        ids = [j for j in [joint, parents[joint]] + [c for c, p in enumerate(parents) if p == joint]
               if j in self.src]
        src, dst = torch.stack([self.src[j] for j in ids]), self.dst[ids]

        def front(pts: torch.Tensor, forward: torch.Tensor) -> torch.Tensor:
            length = (pts[1:] - pts[0]).norm(dim=1).mean() if len(pts) > 1 else pts.new_tensor(0.1)
            return pts[:1] + length * forward[None]

        return (torch.cat([src, front(src, self.anny_forward)]), torch.cat([dst, front(dst, self.target_forward)]))


def _closest_on_triangles(points: torch.Tensor, verts: torch.Tensor, faces: torch.Tensor,
                          allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point [N, 3], the nearest of its allowed triangles ([N, F] bool) as (face id [N], barycentric [N, 3]):
    the projection on each triangle's plane, clamped into the triangle."""
    a, b, c = (verts[faces[:, i]] for i in range(3))  # [F, 3]
    e0, e1 = b - a, c - a
    d00, d01, d11 = (e0 * e0).sum(1), (e0 * e1).sum(1), (e1 * e1).sum(1)
    denom = (d00 * d11 - d01 * d01).clamp(min=1e-18)
    best_face, best_bary = [], []
    for chunk, mask in zip(points.split(32), allowed.split(32)):
        v2 = chunk[:, None] - a[None]  # [n, F, 3]
        d20, d21 = (v2 * e0).sum(-1), (v2 * e1).sum(-1)
        v = (d11 * d20 - d01 * d21) / denom
        w = (d00 * d21 - d01 * d20) / denom
        bary = torch.stack([1 - v - w, v, w], -1).clamp(min=0)
        bary = bary / bary.sum(-1, keepdim=True).clamp(min=1e-12)
        proj = bary[..., :1] * a + bary[..., 1:2] * b + bary[..., 2:] * c
        dist = (proj - chunk[:, None]).norm(dim=-1).masked_fill(~mask, float("inf"))
        face = dist.argmin(1)
        best_face.append(face)
        best_bary.append(bary[torch.arange(len(face)), face])
    return torch.cat(best_face), torch.cat(best_bary)


def transfer_table(target: BodyModel, anny: BodyModel) -> LandmarkTable:
    """``target``'s landmark table, transferred from Anny's (see the module docstring)."""
    dev = target.device
    source = load_table(DATA_FILE, anny).to(dev)
    joint_of = anny_joint_map(anny, target.joint_labels).to(dev)
    labels = target.joint_labels
    with torch.no_grad():
        src_rest, dst_rest = anny.rest(), target.rest()
        src_points = table_points(anny, source.to(anny.device), src_rest.vertices, src_rest.joints)[0].to(dev)
        pairs = _Correspondence(anny, target, src_rest.joints[0].to(dev), dst_rest.joints[0])
        dst_verts = dst_rest.vertices[0]
    surface = ~source.is_joint
    # the target joint that carries each surface point: the dominant Anny bone of its triangle's first corner
    corner = anny.faces[source.face_id.clamp(min=0).to(anny.device)][:, 0]
    anchor = joint_of[anny.skinning_weights(corner).argmax(1).to(dev)]
    head_region = torch.tensor([labels.index(n) for n in _HEAD_REGION], device=dev)
    anchor = torch.where(torch.isin(anchor, head_region), labels.index("head"), anchor)
    moved = src_points.clone()
    for joint in anchor[surface].unique().tolist():
        sel = surface & (anchor == joint)
        r, s, t = _similarity(*pairs.neighbourhood(joint))
        moved[sel] = s * src_points[sel] @ r.T + t
    # snap to the nearest target triangle of the same region: the carrying joint's bone, its parent or children
    owner = target.skinning_weights(torch.arange(target.num_vertices, device=dev)).argmax(1)[target.faces[:, 0]]
    owner = torch.where(torch.isin(owner, head_region), labels.index("head"), owner)  # [F]
    parents = torch.tensor(target.joint_parents, device=dev)
    idx = torch.nonzero(surface).squeeze(1)
    a = anchor[idx][:, None]
    allowed = (owner[None] == a) | (parents[owner][None] == a) | (parents[a.clamp(min=0)] == owner[None])
    face_id = torch.full_like(source.face_id, -1)
    bary = torch.zeros_like(source.bary)
    face_id[idx], bary[idx] = _closest_on_triangles(moved[idx], dst_verts, target.faces, allowed)
    joint_a = torch.where(source.is_joint, joint_of[source.joint_a.clamp(min=0)], -1)
    joint_b = torch.where(source.is_joint, joint_of[source.joint_b.clamp(min=0)], -1)
    snapped = target.surface_points(dst_verts[None], face_id[idx], bary[idx])[0]
    table = LandmarkTable(source.is_joint, joint_a, joint_b, source.joint_w, face_id, bary, residual_px=float("nan"),
                          residual_mm=float((snapped - moved[idx]).norm(dim=1).median() * 1000))
    table.validate(target)
    return table
