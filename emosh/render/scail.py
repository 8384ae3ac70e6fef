"""SCAIL-Preview pose frames: 13 shaded 3D capsules between SMPL joints, with a 2D overlay of hands and face.

The form SCAIL-Preview was trained on (SCAIL-Pose's NLF renderer), re-stated from its description:
  * capsules of radius 21.5 mm between SMPL-24 joints, in millimetres in the camera frame: neck→shoulders, upper
    arms, forearms, neck→hips, thighs, shins, neck→head (no feet, hands or pelvis bar); the nearest surface wins;
  * colour per capsule ``c / 300 + 0.15`` from :data:`CAPSULES`, lit by a headlight: colour × (0.3 + 0.7 ·
    max(n·(0, 0, −1), 0)) × depth factor + white specular 0.5 · (n·h)^32 × depth factor, h the half vector of
    the view ray and the light; depth factor 1 − (z − near) / (far − 0.1), near = max(z_min, 0.1), far =
    min(z_max + 6000, 20000), z_min/z_max over every capsule end of the clip; values clipped to [0, 1] and
    truncated to 0..255; black background;
  * over it, the 2D keypoints (nose–eye–ear sticks, DWPose hands, brow/eye/mouth dots) replace each colour
    channel they touch (SCAIL pastes the overlay where a channel is non-zero).

Camera: the track's own pinhole camera at the output size. SCAIL's ``--use_align`` path likewise swaps its default
55° intrinsics for ones solved against the reference; the capsules then line up with the other controls and the
aligned reference. Rays go through pixel centres (the pack's convention; SCAIL samples integer coordinates, half
a pixel apart). Intersections are analytic (ray against cylinder side and end spheres) instead of sphere tracing.
"""
from __future__ import annotations

import math

import torch

from .. import keypoints as kp
from ..body.model import BodyModel

RADIUS_MM = 21.5
# SMPL-24 joints the capsules use, in slot order, each with the rig role whose bone head sits at that joint;
# "head" comes from the landmarks (see head_point).
_ARM = (("shoulder", "upper_arm"), ("elbow", "forearm"), ("wrist", "wrist"))
_LEG = (("hip", "upper_leg"), ("knee", "shin"), ("ankle", "foot"))
_LIMB_SLOTS = [(side, joint, role) for limb in (_ARM, _LEG) for side in (1, 0) for joint, role in limb]
SLOTS = ("neck",) + tuple(f"{('left', 'right')[side]}_{joint}" for side, joint, _ in _LIMB_SLOTS) + ("head",)
# (from, to, RGB) in SCAIL's order; left/right are the subject's.
CAPSULES: tuple[tuple[str, str, tuple[int, int, int]], ...] = (
    ("neck", "right_shoulder", (255, 0, 0)),
    ("neck", "left_shoulder", (0, 255, 255)),
    ("right_shoulder", "right_elbow", (255, 85, 0)),
    ("right_elbow", "right_wrist", (255, 170, 0)),
    ("left_shoulder", "left_elbow", (0, 170, 255)),
    ("left_elbow", "left_wrist", (0, 85, 255)),
    ("neck", "right_hip", (180, 255, 0)),
    ("right_hip", "right_knee", (0, 255, 0)),
    ("right_knee", "right_ankle", (0, 255, 85)),
    ("neck", "left_hip", (0, 0, 255)),
    ("left_hip", "left_knee", (85, 0, 255)),
    ("left_knee", "left_ankle", (170, 0, 255)),
    ("neck", "head", (150, 150, 150)),
)
_EARS = (kp.BODY_NAMES.index("left_ear"), kp.BODY_NAMES.index("right_ear"))
_PIXELS_PER_PASS = 1 << 15  # pixels traced against every capsule at once (bounds memory)


def scail_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """SCAIL's output (height, width) for a source of ``image_size``: 512 × 896, portrait 896 × 512."""
    height, width = image_size
    return (512, 896) if height < width else (896, 512)


def joint_indices(model: BodyModel) -> list[int]:
    """Indices into ``model.joint_labels`` of the SMPL joints of :data:`SLOTS` (all but the head), from its rig."""
    rig = model.rig
    bones = [rig.neck] + [getattr(rig, role)[side] for side, _, role in _LIMB_SLOTS]
    return [model.joint_labels.index(bone) for bone in bones]


def head_point(landmarks: torch.Tensor) -> torch.Tensor:
    """SMPL's head joint [B, 3] from 553-layout landmarks [B, 553, 3]: the middle of the head at ear height.

    The body model's own head bone sits lower, at the skull base; SMPL's head joint is inside the head between
    the ears, so the neck→head capsule reaches up into the head as in SCAIL's renders.
    """
    return landmarks[:, list(_EARS)].mean(dim=1)


def slot_points(joints: torch.Tensor, landmarks: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """Camera-frame joints [B, K, 3] and landmarks [B, 553, 3] (metres) → the 14 SMPL slots [B, 14, 3] in mm."""
    return torch.cat([joints[:, indices], head_point(landmarks)[:, None]], dim=1) * 1000.0


def depth_range(points_mm: torch.Tensor) -> tuple[float, float]:
    """(near, far) of the depth factor from every slot of the clip [T, 14, 3] (mm), clamped as SCAIL does."""
    z = points_mm[..., 2]
    return max(float(z.min()), 0.1), min(float(z.max()) + 6000.0, 20000.0)


def render_capsules(points_mm: torch.Tensor, focal: torch.Tensor, size: tuple[int, int],
                    depth: tuple[float, float]) -> torch.Tensor:
    """Shaded capsules uint8 [B, H, W, 3] of the slots [B, 14, 3] (mm, camera frame) seen with ``focal`` [B]."""
    height, width = size
    device = points_mm.device
    index = {name: i for i, name in enumerate(SLOTS)}
    starts = points_mm[:, [index[a] for a, _, _ in CAPSULES]]  # [B, C, 3]
    ends = points_mm[:, [index[b] for _, b, _ in CAPSULES]]
    colors = torch.tensor([rgb for _, _, rgb in CAPSULES], dtype=torch.float32, device=device) / 300.0 + 0.15
    out = torch.zeros(points_mm.shape[0], height, width, 3, dtype=torch.uint8, device=device)
    for b in range(points_mm.shape[0]):
        box = _pixel_box(points_mm[b], float(focal[b]), size)
        if box is None:
            continue
        (r0, r1), (c0, c1) = box
        rows = torch.arange(r0, r1, device=device, dtype=torch.float32).repeat_interleave(c1 - c0)
        cols = torch.arange(c0, c1, device=device, dtype=torch.float32).repeat(r1 - r0)
        rays = torch.stack([(cols + 0.5 - width / 2) / focal[b], (rows + 0.5 - height / 2) / focal[b],
                            torch.ones_like(cols)], dim=-1)
        rays = rays / rays.norm(dim=-1, keepdim=True)
        colours = torch.cat([_shade(rays[i:i + _PIXELS_PER_PASS], starts[b], ends[b], colors, depth)
                             for i in range(0, rays.shape[0], _PIXELS_PER_PASS)])
        out[b, r0:r1, c0:c1] = colours.view(r1 - r0, c1 - c0, 3)
    return out


def _pixel_box(points_mm: torch.Tensor, focal: float, size: tuple[int, int]):
    """((row0, row1), (col0, col1)) bounding the capsules of one frame's slots [14, 3], None when off-screen.

    Only these pixels are traced (the figure covers a fraction of the frame). A ball of radius r at depth z
    projects within f·r / (z − r) of its centre's image; twice that plus a pixel is a safe margin. A slot closer
    than two radii to the camera plane (or behind it) makes the whole frame traced.
    """
    height, width = size
    z = points_mm[:, 2]
    if float(z.min()) <= 2 * RADIUS_MM:
        return (0, height), (0, width)
    centre = points_mm[:, :2] / z[:, None] * focal + points_mm.new_tensor([width / 2, height / 2])
    margin = 2 * focal * RADIUS_MM / float((z - RADIUS_MM).min()) + 1
    (x0, y0), (x1, y1) = (centre.amin(0) - margin).tolist(), (centre.amax(0) + margin).tolist()
    c0, c1 = max(int(math.floor(x0)), 0), min(int(math.ceil(x1)), width)
    r0, r1 = max(int(math.floor(y0)), 0), min(int(math.ceil(y1)), height)
    return ((r0, r1), (c0, c1)) if r1 > r0 and c1 > c0 else None


def _shade(rays: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, colors: torch.Tensor,
           depth: tuple[float, float]) -> torch.Tensor:
    """Colours uint8 [P, 3] of unit camera rays [P, 3] against capsules ``starts``/``ends`` [C, 3] (mm)."""
    t, capsule = _first_hit(rays, starts, ends)
    hit = torch.isfinite(t)
    result = torch.zeros(rays.shape[0], 3, dtype=torch.uint8, device=rays.device)
    if not bool(hit.any()):
        return result
    d, k, t = rays[hit], capsule[hit], t[hit]
    point = d * t[:, None]
    a, axis = starts[k], ends[k] - starts[k]
    along = ((point - a) * axis).sum(-1) / (axis * axis).sum(-1).clamp(min=1e-12)
    normal = point - (a + along.clamp(0.0, 1.0)[:, None] * axis)
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    light = d.new_tensor([0.0, 0.0, 1.0])
    diffuse = (-(normal * light).sum(-1)).clamp(min=0.0)
    half = -d - light
    half = half / half.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    specular = (normal * half).sum(-1).clamp(min=0.0) ** 32
    near, far = depth
    factor = (1.0 - (point[:, 2] - near) / (far - 0.1)).clamp(0.0, 1.0)
    rgb = colors[k] * (0.3 + 0.7 * diffuse)[:, None] * factor[:, None] + (0.5 * specular * factor)[:, None]
    result[hit] = (rgb.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return result


def _first_hit(rays: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest ray distance [P] (inf = miss) and capsule index [P] of unit rays from the origin [P, 3].

    A capsule is the union of a finite cylinder and two balls: the ray enters it at the earliest of its entry into
    the cylinder's side (where that lies between the ends) and its entries into the two balls.
    """
    r2 = RADIUS_MM ** 2
    axis = ends - starts  # [C, 3]
    length2 = (axis * axis).sum(-1).clamp(min=1e-12)  # [C]
    d_axis = rays @ axis.T  # [P, C]
    o_axis = -(starts * axis).sum(-1)  # origin − start along the axis, [C]
    d_start = rays @ starts.T  # [P, C]
    start2 = (starts * starts).sum(-1)
    # Side: |(o − a) − ((o − a)·u) u|² = r² with o = 0, u = axis / |axis|, point t·d.
    qa = length2 - d_axis ** 2
    qb = -length2 * d_start - o_axis * d_axis
    qc = length2 * start2 - o_axis ** 2 - r2 * length2
    disc = qb ** 2 - qa * qc
    t_side = (-qb - disc.clamp(min=0.0).sqrt()) / qa.clamp(min=1e-12)
    along = o_axis + t_side * d_axis
    side_ok = (disc >= 0) & (qa > 1e-9 * length2) & (along >= 0) & (along <= length2) & (t_side > 0)
    t = torch.where(side_ok, t_side, torch.full_like(t_side, float("inf")))
    for centre in (starts, ends):
        b = rays @ centre.T  # d·c
        disc_ball = b ** 2 - ((centre * centre).sum(-1) - r2)
        t_ball = b - disc_ball.clamp(min=0.0).sqrt()
        t = torch.where((disc_ball >= 0) & (t_ball > 0) & (t_ball < t), t_ball, t)
    return t.min(dim=1)
