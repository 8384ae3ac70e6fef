"""Confidence-aware, batched fitting of a body model (Anny, or SMPL-X + FLAME) to MediaPipe landmarks over a window
of frames.

Parameters per frame: active bone rotations (in per-bone anatomical frames so hinge joints and fingers get cheap,
low-dimensional priors), global orientation, the pelvis position in the camera as (x/z, y/z, log z) — which keeps
depth well conditioned — and the facial coefficients (Anny: 52 ARKit actions in [0, 1]; FLAME: 50 signed ones).
The shape (Anny's 6 phenotypes, or SMPL-X + FLAME betas) is shared by all frames.
The camera is fixed: ``view_rotation``, zero translation, one focal length; the body moves in front of it.

Loss = Geman-McClure reprojection error (in % of the person's box height, weighted by detection confidence)
     + pose / finger / facial-action priors + second-difference smoothness on every per-frame parameter
     (+ shape prior when the shape is optimised). Staged Adam: camera/global → body → hands and face.
Only the ~1,500 vertices under a landmark are skinned (the model's own bone kinematics, a small LBS), which is what
makes the fit fast enough for video on a CPU.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import roma
import torch

from ..body.camera import view_rotation
from ..body.kinematics import RestSkeleton
from ..body.landmarks import LandmarkTable, landmark_table
from ..body.model import BodyModel
from ..body.track import LANDMARK_GROUPS, NUM_LANDMARKS
from .silhouette import MASK_THRESHOLD, Silhouette

BODY = slice(*LANDMARK_GROUPS["body"])
HANDS = slice(LANDMARK_GROUPS["left_hand"][0], LANDMARK_GROUPS["right_hand"][1])
FACE = slice(*LANDMARK_GROUPS["face"])
# Face-mesh silhouette points: they slide over the cheeks as the head turns, so they are trusted less.
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
             176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
# Face-mesh lips, eyelids and irises: the points whose shape within the face is the expression (jaw, smile,
# blinks, gaze).
FACE_DETAIL = list(range(468, 478)) + [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409, 78, 95,
               88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415,
               263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398,
               33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173]
# Body points used to place the body before it is posed: face, shoulders, hips.
TORSO_POINTS = list(range(0, 13)) + [23, 24]


# ---------------------------------------------------------------------------------------------- landmark skinning
class LandmarkBody:
    """The body model restricted to the 553 landmarks: rest state once per shape, then the model's own bone
    kinematics (``BodyModel.pose_bones``) and LBS of the ~1,500 vertices under a landmark only, which is what makes
    the fit fast enough for video on a CPU. ``tests/test_tracker.py`` checks it against the full model."""

    def __init__(self, model: BodyModel, table: LandmarkTable | None = None):
        self.model = model
        self.table = table if table is not None else landmark_table(model)
        dev = model.device
        surf = torch.nonzero(~self.table.is_joint).squeeze(1)
        corners = model.faces[self.table.face_id[surf]]  # [S, 3]
        self.vertex_ids, inverse = torch.unique(corners.reshape(-1), return_inverse=True)
        self.surface_index = surf
        self.surface_corners = inverse.view(-1, 3)
        self.surface_bary = self.table.bary[surf].to(dev)
        self.joint_index = torch.nonzero(self.table.is_joint).squeeze(1)
        self.skin_weights = model.skinning_weights(self.vertex_ids)  # [M, J]
        self.facial = model.facial_blendshapes[:, self.vertex_ids.to(dev)].to(torch.float32)  # [E, M, 3]
        table_order = torch.cat([self.joint_index, self.surface_index])
        self.table_order = torch.argsort(table_order)

    def rest(self, shape: torch.Tensor) -> RestSkeleton:
        """The rest skeleton of ``shape`` [S], its vertices restricted to the landmark vertices [1, M, 3]."""
        rest = self.model.rest_skeleton(shape)
        return replace(rest, vertices=rest.vertices[:, self.vertex_ids.to(rest.vertices.device)])

    def landmarks(self, rest: RestSkeleton, pose: torch.Tensor, global_orient: torch.Tensor,
                  translation: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """[B, 553, 3] world-frame landmark positions (same maths as the model's forward + mesh_landmarks)."""
        return self.posed(rest, pose, global_orient, translation, expression)[0]

    def posed(self, rest: RestSkeleton, pose: torch.Tensor, global_orient: torch.Tensor,
              translation: torch.Tensor, expression: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(landmarks [B, 553, 3], joints [B, J, 3]) in the world frame."""
        b = pose.shape[0]
        bones = self.model.pose_bones(rest, pose, global_orient, translation)
        flat = torch.cat([bones.skin_rotations.flatten(2), bones.skin_translations], 2)  # [B, J, 12]
        blended = torch.matmul(self.skin_weights, flat)  # [B, M, 12]
        verts = rest.vertices + torch.einsum("be,emc->bmc", expression, self.facial)
        skinned = (blended[..., :9].reshape(b, -1, 3, 3) * verts[:, :, None, :]).sum(-1) + blended[..., 9:]
        tab = self.table
        j = self.joint_index
        w = tab.joint_w[j][None, :, None]
        joints = bones.joints
        joint_pts = (1 - w) * joints[:, tab.joint_a[j]] + w * joints[:, tab.joint_b[j]]
        surface_pts = (skinned[:, self.surface_corners] * self.surface_bary[None, :, :, None]).sum(2)
        out = torch.cat([joint_pts, surface_pts], 1)[:, self.table_order]
        return out, joints


# ---------------------------------------------------------------------------------------------- pose basis / priors
@dataclass
class PoseBasis:
    """Active bones, each parametrised in an anatomical frame ``q`` (rotation = frame @ q, axis-angle, rest axes).

    frame [A, 3, 3] columns: (flexion, abduction, twist) for limbs and fingers, world axes for the trunk;
    prior [A, 3] L2 weights per component; mean [A, 3]; hinge [A] True where flexion must stay ≥ 0; group [A]:
    0 trunk/limbs, 1 fingers.
    """

    pose_index: torch.Tensor  # [A] indices into model.pose_labels
    frame: torch.Tensor
    prior: torch.Tensor
    mean: torch.Tensor
    hinge: torch.Tensor
    group: torch.Tensor

    def to_pose(self, q: torch.Tensor, n_pose: int) -> torch.Tensor:
        """[T, A, 3] anatomical components → [T, n_pose, 3] axis-angle (inactive bones at rest)."""
        pose = q.new_zeros(q.shape[0], n_pose, 3)
        pose[:, self.pose_index] = (self.frame[None] @ q[..., None]).squeeze(-1)
        return pose

    def from_pose(self, pose: torch.Tensor) -> torch.Tensor:
        return (self.frame.transpose(1, 2)[None] @ pose[:, self.pose_index, :, None]).squeeze(-1)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp(min=1e-9)


@dataclass(frozen=True)
class _Row:
    """One active bone of the basis: its frame and prior, and which way its flexion must bend (``bends``:
    "forward" for elbows, "backward" for knees, "palm" for fingers, "" for free joints; ``side`` 0 left, 1 right)."""

    bone: str
    frame: torch.Tensor
    prior: list[float]
    mean: list[float]
    hinge: bool
    group: int
    bends: str = ""
    side: int = 0
    tip: bool = False  # last phalanx: no child to test its flexion on, it follows the middle one


def pose_basis(model: BodyModel) -> PoseBasis:
    """Frames and prior weights from the model's rest skeleton and rig (the rotations are in world-aligned rest
    axes)."""
    joints = model.rest().joints[0]
    rig = model.rig
    labels = model.joint_labels
    J = lambda name: joints[labels.index(name)]  # noqa: E731
    forward = joints.new_tensor(rig.forward)
    eye = torch.eye(3, device=joints.device)
    rows = [_Row(name, eye, [w] * 3, [0.0] * 3, False, 0) for name, w in rig.trunk.items()]
    for side in (0, 1):
        rows.append(_Row(rig.clavicle[side], eye, [20.0] * 3, [0.0] * 3, False, 0))
        rows.append(_Row(rig.upper_arm[side], eye, [0.2] * 3, [0.0] * 3, False, 0))
        rows.append(_Row(rig.upper_leg[side], eye, [0.2] * 3, [0.0] * 3, False, 0))
        rows.append(_Row(rig.foot[side], eye, [2.0] * 3, [0.0] * 3, False, 0))
        rows.append(_Row(rig.wrist[side], eye, [1.0] * 3, [0.0] * 3, False, 0))
        # elbow: flexion brings the forearm forward; knee: flexion brings the shin backward
        elbow, wrist, shoulder = J(rig.forearm[side]), J(rig.wrist[side]), J(rig.upper_arm[side])
        d = _unit(wrist - elbow)
        a = _unit(torch.linalg.cross(_unit(elbow - shoulder), forward))
        a = _unit(a - (a @ d) * d)
        rows.append(_Row(rig.forearm[side], torch.stack([a, torch.linalg.cross(d, a), d], 1), [0.05, 10.0, 0.5],
                         [0.0] * 3, True, 0, "forward", side))
        knee, ankle, hip = J(rig.shin[side]), J(rig.foot[side]), J(rig.upper_leg[side])
        d = _unit(ankle - knee)
        a = _unit(torch.linalg.cross(_unit(knee - hip), -forward))
        a = _unit(a - (a @ d) * d)
        rows.append(_Row(rig.shin[side], torch.stack([a, torch.linalg.cross(d, a), d], 1), [0.05, 10.0, 2.0],
                         [0.0] * 3, True, 0, "backward", side))
        # fingers: flexion about (finger × palm normal)
        palm = joints.new_tensor(rig.palm[side])
        for digit, segments in enumerate(rig.fingers[side]):
            for seg, bone in enumerate(segments):
                tip = seg == len(segments) - 1
                d = _unit((2 * J(bone) - J(segments[seg - 1]) if tip else J(segments[seg + 1])) - J(bone))
                a = _unit(torch.linalg.cross(d, palm - (palm @ d) * d))
                frame = torch.stack([a, torch.linalg.cross(a, d), d], 1)
                if digit == 0:  # thumb
                    rows.append(_Row(bone, frame, [0.2, 0.2, 1.0], [0.1, 0.0, 0.0], False, 1))
                else:
                    rows.append(_Row(bone, frame, [0.05, 0.5 if seg == 0 else 20.0, 20.0], [0.15, 0.0, 0.0], True,
                                     1, "palm", side, tip))
    dev = joints.device
    column = lambda name: torch.tensor([getattr(r, name) for r in rows], device=dev)  # noqa: E731
    basis = PoseBasis(torch.tensor([model.pose_labels.index(r.bone) for r in rows], device=dev),
                      torch.stack([r.frame for r in rows]).to(dev), column("prior"), column("mean"), column("hinge"),
                      column("group"))
    return _orient_flexion(model, basis, rows)


def _orient_flexion(model: BodyModel, basis: PoseBasis, rows: list[_Row]) -> PoseBasis:
    """Flip hinge frames whose positive flexion bends the wrong way (checked numerically on the rest body, one
    batched forward, on the bone's first child): elbows bring the forearm forward, knees the shin backward, fingers
    curl toward the palm."""
    frame = basis.frame.clone()
    labels, parents = model.joint_labels, model.joint_parents
    checked = [k for k, r in enumerate(rows) if r.bends and not r.tip]
    motion = model.zero_motion(len(checked) + 1)
    for n, k in enumerate(checked, start=1):
        motion["pose"][n, basis.pose_index[k]] = 0.4 * frame[k][:, 0]
    body = LandmarkBody(model)  # its own kinematics: light, and no multi-threaded mesh skinning here
    with torch.no_grad():
        joints = body.posed(body.rest(model.default_shape()), **motion)[1]
    forward = joints.new_tensor(model.rig.forward)
    flipped: dict[str, bool] = {}
    for n, k in enumerate(checked, start=1):
        r = rows[k]
        child = parents.index(labels.index(r.bone))
        moved = joints[n, child] - joints[0, child]
        toward = {"forward": forward, "backward": -forward, "palm": joints.new_tensor(model.rig.palm[r.side])}[r.bends]
        flipped[r.bone] = bool(moved @ toward < 0)
    for k, r in enumerate(rows):
        if not r.bends:
            continue
        segments = model.rig.fingers[r.side]
        middle = next((s[-2] for s in segments if s[-1] == r.bone), None) if r.tip else None
        if flipped[middle if r.tip else r.bone]:
            frame[k, :, 0] = -frame[k, :, 0]
            frame[k, :, 1] = -frame[k, :, 1]
    return replace(basis, frame=frame)


# ---------------------------------------------------------------------------------------------- fitting
@contextmanager
def _small_op_threads(device: torch.device):
    """The fit is thousands of tiny ops: on CPU one intra-op thread is faster, and far faster on a busy machine
    (idle OpenMP workers spin); the caller's setting is restored afterwards."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class FitWeights:
    """Loss weights (the data term is in units of 1 % of the person's box height)."""

    sigma: float = 8.0  # Geman-McClure scale, % of box height
    body: float = 1.0
    hands: float = 1.0
    face: float = 1.0
    pose_prior: float = 0.02
    finger_prior: float = 0.02
    hinge: float = 10.0
    expr_prior: float = 0.3
    expr_l1: float = 3.0  # sparsity: an action the face does not show stays at 0 (for Anny the clamp at 0 is its prox)
    face_detail: float = 30.0  # lips/eyelids relative to the face centre, in % of the face height
    face_detail_sigma: float = 5.0  # its Geman-McClure scale, % of the face height
    blendshape_prior: float = 2.0
    shape_prior: float = 0.5
    silhouette_outside: float = 10.0  # mesh past the person mask (see track/silhouette.py)
    silhouette_cover: float = 20.0  # person pixels far from the mesh (capped: loose clothes)
    smooth_pose: float = 20.0
    smooth_global: float = 40.0
    smooth_depth: float = 200.0
    smooth_expr: float = 4.0


@dataclass
class FitSettings:
    iterations: int = 60  # Adam steps per window, split over the three stages
    stage_split: tuple[float, float, float] = (0.25, 0.35, 0.4)
    silhouette_iterations: int = 100  # extra shape stage when a person mask is given (still photos)
    lr: float = 0.04  # for a full body; scaled down with the box's metric height (see Fitter._step_scale)
    full_body_m: float = 1.7
    weights: FitWeights = field(default_factory=FitWeights)


@dataclass
class FitState:
    """Per-frame fitted parameters of a window (q in the PoseBasis frames; cam = (x/z, y/z, log z) of the pelvis)."""

    q: torch.Tensor  # [T, A, 3]
    orient: torch.Tensor  # [T, 3]
    cam: torch.Tensor  # [T, 3]
    expr: torch.Tensor  # [T, E]

    def detach(self) -> "FitState":
        return FitState(*(t.detach().clone() for t in (self.q, self.orient, self.cam, self.expr)))

    def cat(self, other: "FitState") -> "FitState":
        return FitState(*(torch.cat([a, b]) for a, b in zip(
            (self.q, self.orient, self.cam, self.expr), (other.q, other.orient, other.cam, other.expr))))

    def index(self, idx) -> "FitState":
        return FitState(self.q[idx], self.orient[idx], self.cam[idx], self.expr[idx])


@dataclass
class Targets:
    """Detections of a window: landmarks [T, 553, 2] px, weights [T, 553] (confidence, gated), box [T] px
    (person box height), blendshapes [T, E] or None, world_body [T, 33, 3] or None (NaN where missing), mask
    [T, H, W] person probability or None (its silhouette shapes the body when the shape is fitted)."""

    landmarks: torch.Tensor
    weights: torch.Tensor
    box: torch.Tensor
    blendshapes: torch.Tensor | None = None
    world_body: torch.Tensor | None = None
    mask: torch.Tensor | None = None


class Fitter:
    """Everything that stays fixed for a video: model, landmark skinning, pose basis, camera and settings."""

    def __init__(self, model: BodyModel, image_size: tuple[int, int], focal: float,
                 settings: FitSettings | None = None):
        self.model = model
        self.device = model.device
        self.body = LandmarkBody(model)
        self.basis = pose_basis(model)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.focal = float(focal)
        self.settings = settings or FitSettings()
        self.cam_R = view_rotation(model.up_axis).to(self.device)
        self.n_pose = len(model.pose_labels)
        self.n_expr = len(model.expression_labels)
        # group weights per landmark (face oval down-weighted, pose-model hand points down-weighted)
        w = torch.ones(NUM_LANDMARKS, device=self.device)
        w[[75 + i for i in FACE_OVAL]] = 0.3
        w[[17, 18, 19, 20, 21, 22]] = 0.3
        self.point_weight = w
        self.face_detail_index = torch.tensor([FACE.start + i for i in FACE_DETAIL], device=self.device)

    # ------------------------------------------------------------------ conversions
    def translation(self, cam: torch.Tensor) -> torch.Tensor:
        """(x/z, y/z, log z) of the pelvis in the camera → world translation (the camera sits at the origin)."""
        z = cam[:, 2:3].exp()
        p = torch.cat([cam[:, :2] * z, z], 1)
        return p @ self.cam_R  # R^T p, row-vector form

    def cam_params(self, translation: torch.Tensor) -> torch.Tensor:
        p = translation @ self.cam_R.T
        z = p[:, 2:3].clamp(min=1e-3)
        return torch.cat([p[:, :2] / z, z.log()], 1)

    def project(self, points: torch.Tensor) -> torch.Tensor:
        cam = points @ self.cam_R.T
        h, w = self.image_size
        centre = cam.new_tensor([w / 2.0, h / 2.0])
        return self.focal * cam[..., :2] / cam[..., 2:3].clamp(min=1e-3) + centre

    def motion(self, state: FitState) -> dict[str, torch.Tensor]:
        return dict(pose=self.basis.to_pose(state.q, self.n_pose), global_orient=state.orient,
                    translation=self.translation(state.cam), expression=state.expr)

    def landmarks2d(self, rest, state: FitState) -> torch.Tensor:
        return self.project(self.body.landmarks(rest, **self.motion(state)))

    # ------------------------------------------------------------------ initialisation
    def initial_state(self, targets: Targets, shape: torch.Tensor, previous: FitState | None) -> FitState:
        """Pose and expression warm-started from the previous window's last frame (else the prior mean); per frame,
        the facing from the metric pose landmarks and a closed-form placement (depth, image position) of the body,
        so a window whose person turned or moved since the last one starts near the answer."""
        t = targets.landmarks.shape[0]
        if previous is not None:
            last = previous.index(slice(-1, None))
            q, expr, orient = last.q.repeat(t, 1, 1), last.expr.repeat(t, 1), last.orient.repeat(t, 1)
        else:
            q = self.basis.mean[None].repeat(t, 1, 1)
            expr = torch.zeros(t, self.n_expr, device=self.device)
            orient = torch.zeros(t, 3, device=self.device)
        if targets.blendshapes is not None:
            seen = torch.isfinite(targets.blendshapes)
            expr = torch.where(seen, torch.nan_to_num(targets.blendshapes).clamp(0, 1), expr)
        orient = self._initial_orient(targets, orient, fallback_facing=previous is None)
        with torch.no_grad():
            cam = self._place(self.body.rest(shape), FitState(q, orient, torch.zeros(t, 3, device=self.device),
                                                              expr), targets)
        if previous is not None:  # frames too empty to place keep the previous placement
            cam = torch.where(torch.isfinite(cam), cam, previous.cam[-1:])
        return FitState(q, orient, torch.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0), expr)

    def _initial_orient(self, targets: Targets, orient: torch.Tensor, fallback_facing: bool) -> torch.Tensor:
        """Facing from the metric pose landmarks when available (Procrustes on shoulders/hips); otherwise, with
        ``fallback_facing``, from which image side the subject's left shoulder is on (front or back view)."""
        orient = orient.clone()
        rest = self.body.landmarks(self.body.rest(self.model.default_shape()),
                                   self.basis.to_pose(self.basis.mean[None], self.n_pose),
                                   orient[:1] * 0, orient[:1] * 0, torch.zeros(1, self.n_expr, device=self.device))[0]
        ids = [11, 12, 23, 24]
        src = rest[ids] @ self.cam_R.T  # rest points in camera axes
        for k in range(orient.shape[0]):
            wb = None if targets.world_body is None else targets.world_body[k, ids]
            if wb is not None and torch.isfinite(wb).all() and (targets.weights[k, ids] > 0).sum() >= 3:
                rot = roma.rigid_points_registration(src[None], wb[None])[0][0]
                orient[k] = roma.rotmat_to_rotvec(self.cam_R.T @ rot @ self.cam_R)  # camera → world frame
            elif fallback_facing:
                ls, rs = targets.landmarks[k, 11], targets.landmarks[k, 12]
                seen = targets.weights[k, 11] > 0 and targets.weights[k, 12] > 0
                if seen and ls[0] < rs[0]:  # subject's left on the image left: seen from behind
                    orient[k] = orient.new_tensor([0.0, 0.0, math.pi])
        return orient

    def _place(self, rest, state: FitState, targets: Targets) -> torch.Tensor:
        """Weak-perspective least squares, per frame, for the depth and image position of the pelvis from the
        torso and face points → cam [T, 3] (NaN where fewer than 2 points are seen)."""
        h, wd = self.image_size
        model_pts = self.body.landmarks(rest, **self.motion(state)) @ self.cam_R.T  # camera axes, pelvis at 0
        torso = torch.zeros(NUM_LANDMARKS, dtype=torch.bool, device=self.device)
        torso[TORSO_POINTS] = True
        torso[FACE] = True
        w = targets.weights * torso[None]
        few = (w > 0).sum(1) < 3
        w = torch.where(few[:, None], targets.weights, w)  # e.g. only hands seen: use what there is
        w = (w > 0).float()[..., None]
        n = w.sum(1).clamp(min=1e-9)  # [T, 1]
        x = model_pts[..., :2]
        u = targets.landmarks - x.new_tensor([wd / 2.0, h / 2.0])
        xm, um = (w * x).sum(1) / n, (w * u).sum(1) / n
        xc, uc = (x - xm[:, None]) * w, (u - um[:, None]) * w
        s = ((xc * uc).sum((1, 2)) / (xc * xc).sum((1, 2)).clamp(min=1e-9)).clamp(min=1e-3)
        z = self.focal / s
        offset = um / s[:, None] - xm  # pelvis position in metres (camera x/y) at depth z
        cam = torch.stack([offset[:, 0] / z, offset[:, 1] / z, z.log()], 1)
        return torch.where((n < 2)[:, :1].expand_as(cam), torch.full_like(cam, float("nan")), cam)

    # ------------------------------------------------------------------ the optimisation
    def fit(self, targets: Targets, shape: torch.Tensor, init: FitState, context: FitState | None = None,
            fit_shape: bool = False, iterations: int | None = None) -> tuple[FitState, torch.Tensor]:
        """Staged Adam on one window. ``context``: fixed frames just before the window (smoothness continuity).
        Returns the fitted state and the (possibly refined) shape."""
        with _small_op_threads(self.device):
            return self._fit(targets, shape, init, context, fit_shape, iterations)

    def _fit(self, targets: Targets, shape: torch.Tensor, init: FitState, context: FitState | None,
             fit_shape: bool, iterations: int | None) -> tuple[FitState, torch.Tensor]:
        s = self.settings
        wts = s.weights
        iterations = iterations or s.iterations
        params = {name: getattr(init, name).detach().clone().requires_grad_(True)
                  for name in ("q", "orient", "cam", "expr")}
        shape_p = shape.detach().clone().requires_grad_(fit_shape)
        conf = targets.weights * self.point_weight[None]
        group_w = torch.zeros(NUM_LANDMARKS, device=self.device)
        group_w[BODY], group_w[HANDS], group_w[FACE] = wts.body / 33, wts.hands / 21, wts.face / 160
        box = targets.box.clamp(min=1.0)[:, None]
        torso = torch.zeros(NUM_LANDMARKS, device=self.device)
        torso[TORSO_POINTS] = 1.0
        torso[FACE] = 1.0
        no_hands = torch.ones(NUM_LANDMARKS, device=self.device)
        no_hands[HANDS] = 0.0
        finger = (self.basis.group == 1)
        rest = None if fit_shape else self.body.rest(shape_p)
        n1, n2 = (int(round(iterations * f)) for f in s.stage_split[:2])
        stages = [(n1, ["orient", "cam"], torso), (n2, ["orient", "cam", "q"], no_hands),
                  (iterations - n1 - n2, ["orient", "cam", "q", "expr"], None)]
        silhouettes = self._silhouettes(targets) if fit_shape else []
        if silhouettes:  # girth from the outline, once the pose sits on the landmarks
            stages.append((s.silhouette_iterations, ["orient", "cam", "q", "silhouette"], None))
        lr = s.lr * self._step_scale(targets, init)
        lrs = {"q": lr, "orient": lr, "cam": lr * 0.5, "expr": lr * 1.5}
        for steps, names, mask in stages:
            if steps <= 0:
                continue
            groups = [{"params": [params[n]], "lr": lrs[n]} for n in names if n in params]
            if fit_shape:
                groups.append({"params": [shape_p], "lr": s.lr * 0.5 * self.model.shape_scale})
            opt = torch.optim.Adam(groups)
            base_lr = [g["lr"] for g in groups]
            for step in range(steps):
                # linear decay to 10 %: Adam's normalised steps otherwise leave lr-sized noise in every frame
                for g, lr in zip(opt.param_groups, base_lr):
                    g["lr"] = lr * (1.0 - 0.9 * step / max(steps - 1, 1))
                opt.zero_grad(set_to_none=True)
                state = FitState(params["q"], params["orient"], params["cam"], params["expr"])
                r = self.body.rest(shape_p) if fit_shape else rest
                proj = self.landmarks2d(r, state)
                err = (proj - targets.landmarks).norm(dim=-1) / box * 100.0  # % of box height
                rho = err.square() / (err.square() + wts.sigma ** 2) * wts.sigma ** 2
                w = conf * group_w[None] * (mask[None] if mask is not None else 1.0)
                data = (w * rho).sum() / err.shape[0]
                loss = data + self._priors(state, targets, finger, fit_shape, shape_p, names)
                loss = loss + self._smoothness(state, context, names)
                if "expr" in names:
                    loss = loss + self._face_detail(proj, targets, conf)
                if "silhouette" in names:
                    loss = loss + self._silhouette_loss(silhouettes, shape_p, state)
                loss.backward()
                if "q" in names and "expr" not in names:
                    params["q"].grad[:, finger] = 0.0  # fingers wait for the hand stage
                opt.step()
                with torch.no_grad():
                    if self.model.expression_range is not None:
                        params["expr"].clamp_(*self.model.expression_range)
                    if fit_shape and self.model.shape_range is not None:
                        shape_p.clamp_(*self.model.shape_range)
        out = FitState(params["q"], params["orient"], params["cam"], params["expr"]).detach()
        return out, shape_p.detach()

    def _face_detail(self, proj: torch.Tensor, targets: Targets, conf: torch.Tensor) -> torch.Tensor:
        """Expression term: the body-box error scale makes a full body's lip gap or blink a fraction of a percent, so
        the lips and eyelids are also compared in the face's own frame (centred, in % of the face height)."""
        wts = self.settings.weights
        idx = self.face_detail_index
        w = conf[:, idx]
        seen = (w > 0).all(1)
        if not seen.any():
            return proj.new_zeros(())
        p, d, w = proj[seen][:, idx], targets.landmarks[seen][:, idx], w[seen]
        face = targets.landmarks[seen][:, FACE]
        height = (face[..., 1].amax(1) - face[..., 1].amin(1)).clamp(min=1.0)[:, None]
        err = ((p - p.mean(1, keepdim=True)) - (d - d.mean(1, keepdim=True))).norm(dim=-1) / height * 100.0
        s2 = wts.face_detail_sigma ** 2
        rho = err.square() / (err.square() + s2) * s2
        return wts.face_detail * (w * rho).mean(1).sum() / proj.shape[0]

    def _silhouettes(self, targets: Targets) -> list[tuple[int, Silhouette]]:
        """(frame, silhouette) for every frame with a non-empty person mask."""
        if targets.mask is None:
            return []
        return [(k, Silhouette(targets.mask[k], float(targets.box[k]))) for k in range(targets.mask.shape[0])
                if bool((targets.mask[k] >= MASK_THRESHOLD).any())]

    def _silhouette_loss(self, silhouettes: list[tuple[int, Silhouette]], shape: torch.Tensor,
                         state: FitState) -> torch.Tensor:
        wts = self.settings.weights
        frames = [k for k, _ in silhouettes]
        motion = {name: v[frames] for name, v in self.motion(state).items()}
        verts2d = self.project(self.model(shape, **motion).vertices)  # [F, V, 2]
        loss = verts2d.new_zeros(())
        for (_, sil), v in zip(silhouettes, verts2d):
            loss = loss + wts.silhouette_outside * sil.outside(v) + wts.silhouette_cover * sil.uncovered(v)
        return loss / len(silhouettes)

    def _step_scale(self, targets: Targets, init: FitState) -> float:
        """Learning-rate factor for people seen close up: Adam moves every parameter by about lr per step whatever
        its gradient, and the error is in % of the person's box, so a head-and-shoulders box (0.3 m) sees a step
        5x larger than a full body does; on a talking head one step then threw the face off by half the frame."""
        metres = targets.box * init.cam[:, 2].exp() / self.focal  # box height at the person's depth
        return float((metres.median() / self.settings.full_body_m).clamp(0.2, 1.0))

    def _priors(self, state: FitState, targets: Targets, finger: torch.Tensor, fit_shape: bool,
                shape: torch.Tensor, names: list[str]) -> torch.Tensor:
        wts = self.settings.weights
        b = self.basis
        dev = (state.q - b.mean[None]).square() * b.prior[None]
        loss = wts.pose_prior * dev[:, ~finger].sum(dim=(1, 2)).mean()
        loss = loss + wts.finger_prior * dev[:, finger].sum(dim=(1, 2)).mean()
        loss = loss + wts.hinge * torch.relu(-state.q[:, b.hinge, 0] - 0.05).square().sum(1).mean()
        if "expr" in names:
            expr = state.expr
            loss = loss + wts.expr_prior * expr.square().sum(1).mean() + wts.expr_l1 * expr.abs().sum(1).mean()
            if targets.blendshapes is not None:
                seen = torch.isfinite(targets.blendshapes)
                diff = torch.where(seen, state.expr - torch.nan_to_num(targets.blendshapes), 0.0)
                loss = loss + wts.blendshape_prior * diff.square().sum(1).mean()
        if fit_shape:
            offset = (shape - self.model.default_shape()) / self.model.shape_scale
            loss = loss + wts.shape_prior * offset.square().sum()
        return loss

    def _smoothness(self, state: FitState, context: FitState | None, names: list[str]) -> torch.Tensor:
        wts = self.settings.weights
        full = state if context is None else context.cat(state)
        if full.q.shape[0] < 3:
            return state.q.new_zeros(())

        def acc(x: torch.Tensor) -> torch.Tensor:
            return (x[2:] - 2 * x[1:-1] + x[:-2]).square().flatten(1).sum(1).mean()

        loss = wts.smooth_global * (acc(full.orient) + acc(full.cam[:, :2])) + wts.smooth_depth * acc(full.cam[:, 2:])
        if "q" in names:
            loss = loss + wts.smooth_pose * acc(full.q)
        if "expr" in names:
            loss = loss + wts.smooth_expr * acc(full.expr)
        return loss
