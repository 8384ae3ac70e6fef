"""Tracker benchmark: ``python -m emosh.bench tracker --json`` (last stdout line is JSON).

fit_synthetic: random plausible Anny shapes / poses / expressions / cameras → ground-truth landmarks projected,
  noise σ = 1 % of each landmark group's own box height (body, hands; face: 0.35 %, MediaPipe's measured jitter),
  10 % of the pose points (and of the hands and faces, each as a whole) dropped, sparse expressions of the actions
  2D landmarks can show (VISIBLE_ACTIONS) → fit →
  kp2d_err_pct (mean, noise-free targets), pampjpe_body_mm (15 body joints, per-frame similarity Procrustes),
  hand_err_mm (wrist + 15 finger joints per hand, wrist-relative after a rigid alignment of each hand), expr_mae
  (52 facial actions); reference mode on single frames with the body's silhouette as person mask → shape_err (mean
  |Δ phenotype|). Beside each error its trivial baseline: expr_mae_zero_baseline (predict no facial action),
  shape_err_constant_baseline (the average body); expr_corr_median is the median correlation of fitted and true
  actions over the actions that move.
real: the real dance videos in ../shared/data/real (skipped when absent) → reproj_err_pct, detected_ratio,
  jitter_ratio (mean |2nd difference| of fitted 2D landmarks ÷ the same for raw detections, over points seen in
  three consecutive frames), hand_found_given_wrist (share of seen wrists whose hand is found) beside holistic's
  own share without the wrist-crop second look.
fps: end-to-end (decode + detect + fit) on a real video resized to 512 px.
real_photos: every photo in ../shared/data/real, reference mode → silhouette_iou / precision / coverage of the
  fitted mesh against MediaPipe's selfie segmentation (not the mask the fitter uses), beside the landmarks-only fit.
real_faces: talking / laughing clips → correlation of fitted facial actions with raw detected face geometry, and
  the fitted face's width / eye distance / height over the detected ones.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import roma
import torch

from ..body import load_body_model
from ..body.camera import default_focal, project, project_camera_points, to_camera, view_rotation
from ..body.landmarks import mesh_landmarks
from ..body.model import BodyModel
from ..body.track import CONF_GATE, LANDMARK_GROUPS, NUM_LANDMARKS, EHMTrack, seen_landmarks
from ..track.detect import FrameDetection
from ..track.fit import LandmarkBody, pose_basis
from ..track.tracker import (WindowedTracker, fitted_landmarks2d, person_box_height, reprojection_error_pct,
                             track_file)
from .common import emit, peak_rss_mb

REAL_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"
def _body_joints(model: BodyModel) -> list[str]:
    """The joints the body error is measured on: shoulders to ankles, neck, head and a mid-trunk bone."""
    rig = model.rig
    limbs = [bone for role in ("upper_arm", "forearm", "wrist", "upper_leg", "shin", "foot")
             for bone in getattr(rig, role)]
    return limbs + [rig.neck, "head", list(rig.trunk)[1]]


def _hand_joints(model: BodyModel, side: int) -> list[str]:
    """Wrist and finger joints of one hand (0 left, 1 right)."""
    return [model.rig.wrist[side]] + [bone for digit in model.rig.fingers[side] for bone in digit]


# σ of the face-mesh noise, % of the face height: the measured upper bound of MediaPipe's frame-to-frame face-mesh
# jitter (median |2nd difference| of the centred mesh ÷ (√6 · 1.18)) on the two real face clips, 0.15 and 0.36 %.
FACE_NOISE_PCT = 0.35


# Facial actions that move the lips, lids or brows enough to be seen in 2D landmarks (talking, laughing, blinking,
# frowning); cheek puffs, dimples, lip rolls and gaze barely move a face-mesh point and are not sampled.
VISIBLE_ACTIONS = ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "mouthSmileLeft", "mouthSmileRight", "mouthFunnel",
                   "mouthPucker", "browInnerUp", "browDownLeft", "browDownRight", "eyeWideLeft", "eyeWideRight",
                   "mouthStretchLeft", "mouthStretchRight", "mouthFrownLeft", "mouthFrownRight")


def _smooth_keys(keys: np.ndarray, frames: int, every: int) -> np.ndarray:
    """Smoothstep interpolation of keyframes placed every ``every`` frames."""
    out = []
    for t in range(frames):
        k, f = divmod(t, every)
        a = f / every
        a = a * a * (3 - 2 * a)
        out.append((1 - a) * keys[k] + a * keys[min(k + 1, len(keys) - 1)])
    return np.stack(out)


def _bone_roles(model: BodyModel) -> dict[str, tuple[str, int, int, int]]:
    """(role, side, digit, segment) of every bone of the model's rig (sides and fingers 0-based, thumb first)."""
    rig = model.rig
    roles = {bone: ("trunk", 0, 0, 0) for bone in rig.trunk}
    for role in ("clavicle", "upper_arm", "forearm", "wrist", "upper_leg", "shin", "foot"):
        for side, bone in enumerate(getattr(rig, role)):
            roles[bone] = (role, side, 0, 0)
    for side, digits in enumerate(rig.fingers):
        for digit, segments in enumerate(digits):
            for segment, bone in enumerate(segments):
                roles[bone] = ("finger", side, digit, segment)
    return roles


def synthetic_sequence(model: BodyModel, frames: int, seed: int, image_size: tuple[int, int] = (512, 512),
                       noise_pct: float = 1.0, face_noise_pct: float = FACE_NOISE_PCT, drop: float = 0.1,
                       every: int = 16, shape: torch.Tensor | None = None,
                       with_mask: bool = False) -> tuple[list[FrameDetection], dict]:
    """Random plausible motion of one random body (or of ``shape``) seen by the tracker's camera; returns
    (detections, truth). ``with_mask``: each detection carries the body's rendered silhouette as its person mask."""
    rng = np.random.default_rng(seed)
    basis = pose_basis(model)
    roles = _bone_roles(model)
    labels = [model.pose_labels[i] for i in basis.pose_index.tolist()]
    n_keys = frames // every + 2
    q = np.zeros((n_keys, len(labels), 3), np.float32)
    for k in range(n_keys):
        curl = rng.uniform(0, 1.1, size=(2, 5))
        for a, name in enumerate(labels):
            role, side, digit, segment = roles[name]
            if role == "trunk":
                q[k, a] = rng.normal(0, 0.08, 3)
            elif role == "clavicle":
                q[k, a] = rng.normal(0, 0.04, 3)
            elif role == "upper_arm":
                q[k, a] = rng.normal(0, 0.45, 3)
            elif role == "forearm":
                q[k, a] = [rng.uniform(0, 1.6), rng.normal(0, 0.05), rng.normal(0, 0.3)]
            elif role == "wrist":
                q[k, a] = rng.normal(0, 0.25, 3)
            elif role == "upper_leg":
                q[k, a] = rng.normal(0, 0.2, 3)
            elif role == "shin":
                q[k, a] = [rng.uniform(0, 0.8), rng.normal(0, 0.03), rng.normal(0, 0.1)]
            elif role == "foot":
                q[k, a] = rng.normal(0, 0.12, 3)
            elif role == "finger" and digit == 0:
                q[k, a] = rng.normal(0, 0.25, 3) + np.array([0.1, 0, 0])
            elif role == "finger":
                q[k, a] = [curl[side, digit] * rng.uniform(0.7, 1.0), rng.normal(0, 0.06) * (segment == 0), 0]
    yaw = rng.uniform(-0.8, 0.8, n_keys)
    tilts = [rng.normal(0, 0.06, n_keys), rng.normal(0, 0.06, n_keys)]
    orient = np.zeros((n_keys, 3), np.float32)
    orient[:, model.up_axis] = yaw
    orient[:, [a for a in range(3) if a != model.up_axis]] = np.stack(tilts, 1)
    expr = np.zeros((n_keys, len(model.expression_labels)), np.float32)
    visible = [model.expression_labels.index(n) for n in VISIBLE_ACTIONS if n in model.expression_labels]
    signed = model.expression_range is None  # FLAME: every coefficient is visible, with either sign
    visible = visible or list(range(len(model.expression_labels)))
    for k in range(n_keys):  # sparse: a neutral face or one to three actions at once
        active = rng.choice(visible, size=int(rng.integers(0, 4)), replace=False)
        sign = rng.choice([-1.0, 1.0], size=len(active)) if signed else 1.0
        expr[k, active] = sign * rng.uniform(0.3, 0.9, size=len(active))
    depth = rng.uniform(2.3, 3.0)
    cam_xy = rng.normal(0, 0.04, (n_keys, 2)).astype(np.float32)
    n_shape = len(model.shape_labels)  # Anny: phenotypes in [0.25, 0.75]; SMPL-X / FLAME betas ~ N(0, 1)
    drawn = rng.normal(0, 1, n_shape) if model.shape_range is None else rng.uniform(0.25, 0.75, n_shape)
    random_shape = torch.tensor(drawn, dtype=torch.float32)
    shape = random_shape if shape is None else shape.float()
    dev = model.device
    qt = torch.from_numpy(_smooth_keys(q, frames, every)).to(dev)
    truth = dict(
        shape=shape.to(dev), pose=basis.to_pose(qt, len(model.pose_labels)),
        global_orient=torch.from_numpy(_smooth_keys(orient, frames, every)).to(dev),
        expression=torch.from_numpy(_smooth_keys(expr, frames, every)).to(dev))
    cxy = torch.from_numpy(_smooth_keys(cam_xy, frames, every)).to(dev)
    cam_R = view_rotation(model.up_axis).to(dev)
    p_cam = torch.cat([cxy * depth, torch.full((frames, 1), depth, device=dev)], 1)
    p_cam[:, 1] += 0.1 * depth  # the pelvis sits a little below the image centre
    truth["translation"] = p_cam @ cam_R
    focal = default_focal(image_size)
    with torch.no_grad():  # ground truth through the full model (the fitter uses its own landmark skinning)
        body = model(truth["shape"], truth["pose"], truth["global_orient"], truth["translation"],
                     truth["expression"])
        pts3 = mesh_landmarks(model, body)
        uv = project(pts3, torch.full((frames,), focal, device=dev), cam_R.expand(frames, 3, 3),
                     torch.zeros(frames, 3, device=dev), image_size)
    truth.update(focal=focal, image_size=image_size, joints=body.joints, landmarks2d=uv)
    masks = [None] * frames
    if with_mask:
        masks = list(silhouettes(model, body.vertices, torch.full((frames,), focal, device=dev),
                                 cam_R.expand(frames, 3, 3), torch.zeros(frames, 3, device=dev),
                                 image_size).astype(np.float32))
    dets = []
    h, w = image_size
    for t in range(frames):
        clean = uv[t].cpu().numpy()
        inside = (clean[:, 0] >= 0) & (clean[:, 0] < w) & (clean[:, 1] >= 0) & (clean[:, 1] < h)
        noisy = clean + rng.normal(0, 1.0, clean.shape) * _noise_scale(clean, inside, noise_pct,
                                                                        face_noise_pct)[:, None]
        conf = np.where(inside & _kept(rng, drop), 1.0, 0.0).astype(np.float32)
        cam_pts = (pts3[t] @ cam_R.T).cpu().numpy()[:33]
        world = cam_pts - 0.5 * (cam_pts[23] + cam_pts[24]) + rng.normal(0, 0.02, (33, 3))
        dets.append(FrameDetection(noisy.astype(np.float32) * conf[:, None], conf, world.astype(np.float32),
                                   num_people=1, mask=masks[t]))
    return dets, truth


def _noise_scale(points: np.ndarray, inside: np.ndarray, noise_pct: float, face_noise_pct: float) -> np.ndarray:
    """[553] detection noise σ (px) per landmark, in % of the height of its own group's box (body, each hand, face),
    since a landmark model's error scales with the crop it sees: a face-mesh point with a body-box σ would be
    several times noisier than the lip gap it has to show."""
    sigma = np.zeros(len(points), np.float32)
    for name, (a, b) in LANDMARK_GROUPS.items():
        seen = points[a:b][inside[a:b], 1]
        extent = float(seen.max() - seen.min()) if len(seen) > 1 else 0.0
        sigma[a:b] = (face_noise_pct if name == "face" else noise_pct) / 100.0 * extent
    return sigma


def _kept(rng: np.random.Generator, drop: float) -> np.ndarray:
    """[553] bool: which landmarks a detector returns. Pose points go missing one by one; a hand or a face is found
    or missed as a whole (MediaPipe's hand and face models return all their points or none)."""
    kept = rng.random(NUM_LANDMARKS) >= drop
    for name, (a, b) in LANDMARK_GROUPS.items():
        if name != "body":
            kept[a:b] = rng.random() >= drop
    return kept


def _procrustes_err(a: torch.Tensor, b: torch.Tensor, scale: bool) -> torch.Tensor:
    """Per-frame mean distance after aligning a [T, N, 3] onto b (rotation + translation (+ scale))."""
    out = roma.rigid_points_registration(a, b, compute_scaling=scale)
    rot, t = out[0], out[1]
    s = out[2] if scale else torch.ones(a.shape[0], device=a.device)
    aligned = s[:, None, None] * a @ rot.transpose(1, 2) + t[:, None]
    return (aligned - b).norm(dim=-1).mean(1)


def fit_synthetic(model: BodyModel, frames: int = 64, seed: int = 0, reference_samples: int = 4,
                  iterations: int | None = None) -> dict:
    """Fit a synthetic sequence and return the accuracy metrics (and the fitting speed)."""
    dets, truth = synthetic_sequence(model, frames, seed)
    tracker = WindowedTracker(model, truth["image_size"], fps=25.0, focal=truth["focal"], iterations=iterations)
    start = time.perf_counter()
    for d in dets:
        tracker.push(d)
    track = tracker.finish()
    fit_seconds = time.perf_counter() - start
    res = synthetic_metrics(model, track, truth)
    res["fit_fps"] = round(frames / fit_seconds, 2)
    shape_errs, constant_errs = [], []
    for k in range(reference_samples):
        rdets, rtruth = synthetic_sequence(model, 1, seed + 100 + k, with_mask=True)
        ref = WindowedTracker(model, rtruth["image_size"], fps=25.0, focal=rtruth["focal"], reference=True)
        ref.push(rdets[0])
        shape_errs.append(float((ref.finish().shape - rtruth["shape"]).abs().mean()))
        constant_errs.append(float((model.default_shape() - rtruth["shape"]).abs().mean()))
    res["shape_err"] = round(float(np.mean(shape_errs)), 4)
    res["shape_err_constant_baseline"] = round(float(np.mean(constant_errs)), 4)  # every phenotype at 0.5
    return res


def synthetic_metrics(model: BodyModel, track: EHMTrack, truth: dict) -> dict:
    lb = LandmarkBody(model)
    with torch.no_grad():
        fitted2d = fitted_landmarks2d(track, model)
        joints = lb.posed(lb.rest(track.shape), **track.motion())[1]
    gt2d = truth["landmarks2d"]
    h, w = truth["image_size"]
    inside = (gt2d[..., 0] >= 0) & (gt2d[..., 0] < w) & (gt2d[..., 1] >= 0) & (gt2d[..., 1] < h)
    box = torch.tensor([person_box_height(g.cpu().numpy(), inside[k].float().cpu().numpy(), (h, w))
                        for k, g in enumerate(gt2d)], device=gt2d.device)
    err = (fitted2d - gt2d).norm(dim=-1) / box[:, None] * 100.0
    kp2d = float(err[inside].mean())
    idx = [model.joint_labels.index(n) for n in _body_joints(model)]
    pampjpe = float(_procrustes_err(joints[:, idx], truth["joints"][:, idx], scale=True).mean()) * 1000.0
    hand = []
    for side in (0, 1):
        hid = [model.joint_labels.index(n) for n in _hand_joints(model, side)]
        a = joints[:, hid] - joints[:, hid[:1]]
        b = truth["joints"][:, hid] - truth["joints"][:, hid[:1]]
        hand.append(_procrustes_err(a, b, scale=False))
    expr_mae = float((track.expression - truth["expression"]).abs().mean())
    return dict(kp2d_err_pct=round(kp2d, 3), pampjpe_body_mm=round(pampjpe, 1),
                hand_err_mm=round(float(torch.stack(hand).mean()) * 1000.0, 1), expr_mae=round(expr_mae, 4),
                expr_mae_zero_baseline=round(float(truth["expression"].abs().mean()), 4),
                expr_corr_median=round(expression_correlation(track.expression, truth["expression"]), 3))


def expression_correlation(fitted: torch.Tensor, truth: torch.Tensor) -> float:
    """Median over the actions that move in ``truth`` [T, E] of the Pearson correlation with ``fitted`` [T, E]
    (an action that never moves has no correlation; a fit that stays at zero scores 0)."""
    a, b = fitted - fitted.mean(0), truth - truth.mean(0)
    active = b.std(0) > 1e-3
    if not active.any():
        return float("nan")
    corr = (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0)).clamp(min=1e-9)
    return float(corr[active].median())


def jitter_ratio(track: EHMTrack, fitted2d: torch.Tensor) -> float:
    """Mean |second difference| of fitted landmarks ÷ that of the raw detections (points seen 3 frames in a row)."""
    det = track.landmarks2d.to(fitted2d)
    seen = track.confidence.to(fitted2d) >= 0.5
    both = seen[2:] & seen[1:-1] & seen[:-2]
    if not both.any():
        return float("nan")
    acc = lambda x: (x[2:] - 2 * x[1:-1] + x[:-2]).norm(dim=-1)  # noqa: E731
    return float(acc(fitted2d)[both].mean() / acc(det)[both].mean().clamp(min=1e-6))


def hand_found_given_wrist(landmarks: np.ndarray, confidence: np.ndarray, image_size: tuple[int, int]) -> float:
    """Share of (frame, side) pairs whose pose wrist is seen inside the image in which that hand is detected too
    (``landmarks`` [T, 553, 2], ``confidence`` [T, 553])."""
    seen = seen_landmarks(landmarks, confidence, image_size)
    wrists, found = [], []
    for wrist, group in ((15, "left_hand"), (16, "right_hand")):
        a, b = LANDMARK_GROUPS[group]
        wrists.append(seen[:, wrist] & (confidence[:, wrist] >= 0.5))
        found.append((confidence[:, a:b] >= CONF_GATE).any(1))
    wrists, found = np.concatenate(wrists), np.concatenate(found)
    return round(float(found[wrists].mean()), 3) if wrists.any() else float("nan")


def holistic_hands_only(path: Path, max_frames: int | None) -> float:
    """:func:`hand_found_given_wrist` of holistic alone (no wrist-crop second look): the baseline."""
    from ..track.detect import Detector, stack_detections
    from ..video import iter_frames, resize_long_side

    dets, size = [], None
    with Detector(recover_hands=False) as detector:
        for frame in iter_frames(path, max_frames=max_frames):
            frame = resize_long_side(frame, 512)
            size = frame.shape[:2]
            dets.append(detector(frame))
    return hand_found_given_wrist(*stack_detections(dets), size)


def real_video(model: BodyModel, path: Path, max_frames: int | None) -> dict:
    start = time.perf_counter()
    track = track_file(path, model, max_frames=max_frames, long_side=512)
    seconds = time.perf_counter() - start
    fitted = fitted_landmarks2d(track, model)
    hands = hand_found_given_wrist(track.landmarks2d.cpu().numpy(), track.confidence.cpu().numpy(), track.image_size)
    return dict(frames=track.num_frames, detected_ratio=round(float(track.detected.float().mean()), 3),
                reproj_err_pct=round(reprojection_error_pct(track, model, fitted), 3),
                jitter_ratio=round(jitter_ratio(track, fitted), 3), fps=round(track.num_frames / seconds, 2),
                hand_found_given_wrist=hands, hand_found_given_wrist_holistic_only=holistic_hands_only(path, max_frames))


PHOTO_PATTERNS = ("photo_*", "ref_*")
FACE_CLIPS = ("video_talking_gestures_man_1.mp4", "video_laughing_woman_dancing_hands.mp4")


def face_correlations(track: EHMTrack, labels: list[str], fitted: torch.Tensor | None = None) -> dict[str, float]:
    """Correlation of fitted facial actions with raw detected face geometry, over frames with a detected face:
    jawOpen with the inner-lip gap, each eye's blink with minus that eye's lid opening, the summed smiles with the
    mouth width (distances divided by the detected face height, forehead 10 to chin 152), each eye's horizontal gaze
    (look out − look in) with where its detected iris sits between the eye corners. With the ``fitted`` landmarks
    [T, 553, 2] also the fitted face's size against the detected one (median ratios; the target is 1 ± 0.03): width
    (cheek 234 to cheek 454), eye distance (iris centre to iris centre) and height."""
    face = LANDMARK_GROUPS["face"][0]
    lm = track.landmarks2d.cpu().numpy()
    ok = (track.confidence[:, face:].cpu().numpy() > 0).all(1)
    def dist(a: int, b: int, points: np.ndarray = lm) -> np.ndarray:
        """Distance between face-mesh points a and b in the face frames (detected unless ``points`` says)."""
        return np.linalg.norm(points[ok, face + a] - points[ok, face + b], axis=1)

    height = dist(10, 152)
    e = track.expression.cpu().numpy()[ok]
    act = lambda name: e[:, labels.index(name)]  # noqa: E731
    corr = lambda a, b: round(float(np.corrcoef(a, b)[0, 1]), 3)  # noqa: E731
    def iris_out(iris: int, inner: int, outer: int) -> np.ndarray:
        """How far the iris sits towards the eye's outer corner: 0 at the inner corner, 1 at the outer one."""
        axis = lm[ok, face + outer] - lm[ok, face + inner]
        return ((lm[ok, face + iris] - lm[ok, face + inner]) * axis).sum(1) / (axis * axis).sum(1)

    sizes = {}
    if fitted is not None:
        fit = fitted.cpu().numpy()
        ratio = lambda a, b: round(float(np.median(dist(a, b, fit) / dist(a, b))), 3)  # noqa: E731
        sizes = dict(face_width_ratio=ratio(234, 454), eye_distance_ratio=ratio(468, 473),
                     face_height_ratio=ratio(10, 152))
    return dict(**sizes, jaw_vs_lip_gap=corr(act("jawOpen"), dist(13, 14) / height),
                blink_left_vs_eye_opening=corr(act("eyeBlinkLeft"), -dist(386, 374) / height),
                blink_right_vs_eye_opening=corr(act("eyeBlinkRight"), -dist(159, 145) / height),
                smile_vs_mouth_width=corr(act("mouthSmileLeft") + act("mouthSmileRight"), dist(61, 291) / height),
                gaze_left_vs_iris=corr(act("eyeLookOutLeft") - act("eyeLookInLeft"), iris_out(473, 362, 263)),
                gaze_right_vs_iris=corr(act("eyeLookOutRight") - act("eyeLookInRight"), iris_out(468, 133, 33)),
                face_frames=int(ok.sum()))


def silhouettes(model: BodyModel, vertices: torch.Tensor, focal: torch.Tensor, cam_R: torch.Tensor,
                cam_t: torch.Tensor, image_size: tuple[int, int]) -> np.ndarray:
    """[B, H, W] bool: pixels covered by the posed meshes ``vertices`` [B, V, 3] through the given camera."""
    from ..body.raster import rasterize

    with torch.no_grad():
        cam = to_camera(vertices, cam_R, cam_t)
        pix = project_camera_points(cam, focal, image_size)
        frags = rasterize(torch.cat([pix, cam[..., 2:]], -1), model.faces, image_size, cull_backfaces=True)
    return frags.mask.cpu().numpy()


def mesh_mask(model: BodyModel, track: EHMTrack) -> np.ndarray:
    """[H, W] bool: pixels the fitted mesh covers in the track's first frame."""
    first = track.frames(0, 1)
    with torch.no_grad():
        vertices = model(first.shape, **first.motion()).vertices
    return silhouettes(model, vertices, first.focal, first.cam_R, first.cam_t, first.image_size)[0]


def person_mask(image: np.ndarray) -> np.ndarray:
    """[H, W] bool person segmentation from MediaPipe's selfie segmenter: a network the fitter never sees (it
    fits the pose model's own mask), so the scores below are not the quantity it optimised."""
    from ..mediapipe_import import import_mediapipe

    mp = import_mediapipe()
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        return seg.process(np.ascontiguousarray(image)).segmentation_mask >= 0.5


def real_photos(model: BodyModel, paths: list[Path]) -> dict:
    """Per photo: silhouette IoU / precision / coverage against the person segmentation and the fitted
    phenotypes, for the full fit and for the landmarks-only baseline (no silhouette term)."""
    from ..track.silhouette import mask_scores
    from ..video import read_image

    out: dict = {}
    for path in paths:
        person = person_mask(read_image(path))
        row: dict = {}
        for key, silhouette in (("fit", True), ("landmarks_only", False)):
            track = track_file(path, model, silhouette=silhouette)
            scores = {k: round(v, 3) for k, v in mask_scores(mesh_mask(model, track), person).items()}
            scores["phenotypes"] = {k: round(float(v), 2) for k, v in zip(model.shape_labels, track.shape.tolist())}
            row[key] = scores
        out[path.stem] = row
    if out:
        for key in ("fit", "landmarks_only"):
            out[f"mean_{key}"] = {m: round(float(np.mean([r[key][m] for r in out.values() if key in r])), 3)
                                  for m in ("silhouette_iou", "precision", "coverage")}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emosh.bench tracker", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON result line")
    parser.add_argument("--frames", type=int, default=64, help="synthetic frames")
    parser.add_argument("--real-frames", type=int, default=150, help="frames per real video (0 = all)")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--photos-only", action="store_true", help="only the real photos and face clips")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = load_body_model("anny", args.device)
    result: dict = {"device": str(args.device), "torch_threads": torch.get_num_threads()}
    if REAL_DIR.is_dir() and not args.skip_real:
        photos = sorted(p for pattern in PHOTO_PATTERNS for p in REAL_DIR.glob(pattern))
        result["real_photos"] = real_photos(model, photos)
        if not args.json:
            print("real_photos", result["real_photos"], flush=True)
        result["real_faces"] = {}
        for name in FACE_CLIPS:
            if (REAL_DIR / name).is_file():
                track = track_file(REAL_DIR / name, model, long_side=512, max_frames=120)
                result["real_faces"][Path(name).stem] = face_correlations(track, model.expression_labels,
                                                                          fitted_landmarks2d(track, model))
        if not args.json:
            print("real_faces", result["real_faces"], flush=True)
    if args.photos_only:
        emit(result)
        return 0
    result["fit_synthetic"] = fit_synthetic(model, frames=args.frames)
    if not args.json:
        print("fit_synthetic", result["fit_synthetic"], flush=True)
    videos = sorted(REAL_DIR.glob("*.mp4")) if REAL_DIR.is_dir() and not args.skip_real else []
    real = {}
    for path in videos:
        real[path.stem] = real_video(model, path, args.real_frames or None)
        if not args.json:
            print(path.stem, real[path.stem], flush=True)
    if real:
        result["real"] = real
        result["fps"] = round(float(np.mean([r["fps"] for r in real.values()])), 2)
    else:
        result["real"] = "skipped: no videos in " + str(REAL_DIR)
    result["targets"] = {"fps": 8, "kp2d_err_pct": 1.0, "pampjpe_body_mm": 45,
                         "expr_mae": "<= 0.5 x expr_mae_zero_baseline", "expr_corr_median": 0.8,
                         "shape_err": "<= 0.5 x shape_err_constant_baseline", "reproj_err_pct": 2.0,
                         "jitter_ratio": 0.6, "real_photos": {"silhouette_iou": 0.85, "precision": 0.93,
                                                              "coverage": 0.85},
                         "real_faces": {"jaw_vs_lip_gap": 0.9, "blink_vs_eye_opening": 0.8,
                                        "smile_vs_mouth_width": 0.7, "face_width_ratio": "1 +- 0.03",
                                        "eye_distance_ratio": "1 +- 0.03"}}
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    emit(result)
    return 0
