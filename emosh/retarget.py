"""Shape Swap / Retarget: the driver's motion performed by the reference person's body.

Shape, motion and camera are separate ``EHMTrack`` fields, so the swap itself is a field copy; joint rotations are
never changed (the reference body bends exactly like the driver), except for limbs the driver does not show: the
tracker can only guess those (its prior's mean: arms held out), so they take the reference's pose from its photo,
blended in and out with the limb's smoothed visibility. What has to adapt to the new body is where it
is: the root trajectory is scaled by the leg-length ratio (a child takes shorter steps) and every frame is shifted
vertically so the lowest foot point stays on the driver's ground line (no floating or sinking when legs differ).
Strengths, per-part switches and camera keyframes are the user-facing options. ``python -m emosh retarget`` (below)
runs it on track files, optionally followed by ``emosh.align.spatial_align``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .body.camera import CameraKey, apply_camera_keys, parse_camera_keys
from .body.joints import expression_groups, eye_joints, hand_joints, limb_joints, slerp_rotvec
from .body.model import BodyModel
from .body.track import CONF_GATE, EHMTrack, seen_landmarks
from .errors import InputError
from .temporal import gaussian_filter

SHAPE_SOURCES = ("reference", "driver", "blend")
PARTS = ("body", "hands", "face", "eyes")
_FOOT_PARTS = ("foot_l", "foot_r")
_FORWARD_CHUNK = 64  # frames per body-model call (bounded memory on long tracks)
# MediaPipe pose landmarks that pin a limb's pose (subject's left = odd): elbow + wrist, knee + ankle
_LIMB_LANDMARKS = {("arm", "l"): (13, 15), ("arm", "r"): (14, 16), ("leg", "l"): (25, 27), ("leg", "r"): (26, 28)}
_VISIBILITY_SECONDS = 0.25  # σ of the visibility smoothing: how fast an unseen limb blends to the reference pose


@dataclass(frozen=True)
class RetargetOptions:
    """``shape``: whose body (reference = shape swap, driver = keep, blend = mix by ``blend`` 0 driver .. 1 reference).
    ``parts``: which parts of the driver's motion to use; a disabled part rests (neutral face, relaxed hands, rest
    body, eyes straight ahead). ``scale_trajectory``: scale the root's travel by the leg-length ratio.
    ``keep_ground``: per frame, shift the body vertically so its lowest foot point matches the driver's.
    ``camera_keys``: zoom/pan keyframes applied to the driver's camera (see ``emosh.body.camera.CameraKey``).
    ``unseen_limbs_from_reference``: arms and legs the driver does not show (out of frame or hidden) take the
    reference's pose instead of the tracker's guess."""

    shape: str = "reference"
    blend: float = 1.0
    expression_strength: float = 1.0
    hand_strength: float = 1.0
    parts: tuple[str, ...] = PARTS
    scale_trajectory: bool = True
    keep_ground: bool = True
    camera_keys: Sequence[CameraKey] = field(default_factory=tuple)
    unseen_limbs_from_reference: bool = True

    def validate(self) -> None:
        if self.shape not in SHAPE_SOURCES:
            raise InputError(f"shape source must be one of {SHAPE_SOURCES}, got {self.shape!r}")
        if not 0.0 <= self.blend <= 1.0:
            raise InputError(f"shape blend must be in [0, 1], got {self.blend}")
        if self.expression_strength < 0 or self.hand_strength < 0:
            raise InputError("expression and hand strength must be >= 0")
        unknown = set(self.parts) - set(PARTS)
        if unknown:
            raise InputError(f"unknown parts {sorted(unknown)}; choose from {PARTS}")


def target_shape(driving: EHMTrack, reference: EHMTrack, options: RetargetOptions) -> torch.Tensor:
    """The body shape of the output track."""
    drv, ref = driving.shape, reference.shape.to(driving.device)
    if drv.shape != ref.shape:
        raise InputError(f"driving and reference shapes differ in size ({tuple(drv.shape)} vs {tuple(ref.shape)})")
    weight = {"reference": 1.0, "driver": 0.0, "blend": options.blend}[options.shape]
    return torch.lerp(drv, ref, weight)


def leg_length(model: BodyModel, shape: torch.Tensor) -> torch.Tensor:
    """Rest-pose height of the pelvis (model origin) above the lowest foot point, in metres."""
    with torch.no_grad():
        rest = model.rest(shape).vertices[0]
    return -rest[:, model.up_axis].min()


def lowest_foot(model: BodyModel, track: EHMTrack) -> torch.Tensor:
    """[T] height (world up axis) of the track's lowest foot vertex per frame, computed in chunks of frames."""
    foot = torch.isin(model.part_labels, torch.tensor([model.part_index(p) for p in _FOOT_PARTS],
                                                     device=model.part_labels.device))
    foot_idx = foot.nonzero(as_tuple=True)[0]
    out = []
    with torch.no_grad():
        for a in range(0, track.num_frames, _FORWARD_CHUNK):
            b = a + _FORWARD_CHUNK
            verts = model(track.shape, **{k: v[a:b] for k, v in track.motion().items()}).vertices
            out.append(verts[:, foot_idx.to(verts.device), model.up_axis].amin(dim=1))
    return torch.cat(out).to(track.device)


def limb_visibility(track: EHMTrack, landmarks: Sequence[int]) -> torch.Tensor:
    """[T] in [0, 1]: how well the track's detections show a limb (all of ``landmarks`` seen, inside the image),
    smoothed over time so that a limb entering or leaving the frame fades rather than pops."""
    rows = list(landmarks)
    if track.landmarks2d is None:  # e.g. an edited track: confidences only
        seen = (track.confidence[:, rows] >= CONF_GATE).all(1)
    else:
        seen = seen_landmarks(track.landmarks2d[:, rows], track.confidence[:, rows], track.image_size).all(1)
    shown = gaussian_filter(seen.float(), _VISIBILITY_SECONDS * track.fps).clamp(0.0, 1.0)
    # The kernel's weights sum to 1 only up to rounding: a limb seen throughout must give exactly 1 (kept as is).
    return torch.where(shown > 1.0 - 1e-5, torch.ones_like(shown), shown)


def fill_unseen_limbs(model: BodyModel, driving: EHMTrack, reference: EHMTrack) -> torch.Tensor:
    """The driver's pose with each limb slerped towards the reference's pose as the driver stops showing it."""
    pose = driving.pose.clone()
    reference_pose = reference.pose[0].to(pose)
    for (limb, side), landmarks in _LIMB_LANDMARKS.items():
        rows = limb_joints(model, limb, side)
        shown = limb_visibility(driving, landmarks).to(pose)[:, None]
        blended = slerp_rotvec(reference_pose[rows].expand_as(pose[:, rows]), pose[:, rows], shown)
        pose[:, rows] = torch.where(shown[..., None] < 1.0, blended, pose[:, rows])  # seen frames stay exact
    return pose


def _motion_parts(model: BodyModel, driving: EHMTrack, pose: torch.Tensor,
                  options: RetargetOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """The driver's ``pose`` and expression with strengths and disabled parts applied."""
    pose, expression = pose.clone(), driving.expression.clone()
    hands, eyes = hand_joints(model), eye_joints(model)
    groups = expression_groups(model)
    face_rows = groups["expression"] + groups["jaw"]
    if options.expression_strength != 1.0:
        expression[:, face_rows] = expression[:, face_rows] * options.expression_strength
    if options.hand_strength != 1.0:
        pose[:, hands] = pose[:, hands] * options.hand_strength  # angles scaled about the rest pose
    if "body" not in options.parts:
        body_rows = [i for i in range(pose.shape[1]) if i not in set(hands) | set(eyes)]
        pose[:, body_rows] = 0.0
    if "hands" not in options.parts:
        pose[:, hands] = 0.0
    if "face" not in options.parts:
        expression[:, face_rows] = 0.0
    if "eyes" not in options.parts:
        pose[:, eyes] = 0.0
        expression[:, groups["eyes"]] = 0.0
    if model.expression_range is not None:
        expression = expression.clamp(*model.expression_range)  # e.g. ARKit facial actions live in [0, 1]
    return pose, expression


def retarget(model: BodyModel, driving: EHMTrack, reference: EHMTrack, options: RetargetOptions | None = None,
             **overrides) -> EHMTrack:
    """The driver's motion and camera on the reference's body (see :class:`RetargetOptions`; keyword arguments
    override single options, e.g. ``retarget(model, drv, ref, expression_strength=0.5)``)."""
    options = options or RetargetOptions()
    if overrides:
        options = RetargetOptions(**{**options.__dict__, **overrides})
    options.validate()
    driving.check_backend(model.backend)
    reference.check_backend(model.backend)
    shape = target_shape(driving, reference, options)
    pose = fill_unseen_limbs(model, driving, reference) if options.unseen_limbs_from_reference else driving.pose
    pose, expression = _motion_parts(model, driving, pose, options)
    translation = driving.translation.clone()
    if options.scale_trajectory:
        ratio = (leg_length(model, shape) / leg_length(model, driving.shape)).to(translation)
        start = translation[:1]
        translation = start + (translation - start) * ratio  # travel scaled about the first frame
    out = driving.replace(shape=shape, pose=pose, expression=expression, translation=translation,
                          landmarks2d=None,  # the driver's raw detections do not describe the new body
                          meta={**driving.meta, "retarget": _describe(options),
                                "reference": reference.meta.get("source", "")})
    if options.keep_ground:
        translation = translation.clone()
        translation[:, model.up_axis] += lowest_foot(model, driving) - lowest_foot(model, out)
        out = out.replace(translation=translation)
    return apply_camera_keys(out, options.camera_keys)


def _describe(options: RetargetOptions) -> str:
    return (f"shape={options.shape}" + (f"({options.blend})" if options.shape == "blend" else "")
            + f", expression x{options.expression_strength}, hands x{options.hand_strength}"
            + f", parts={'+'.join(options.parts)}, scale_trajectory={options.scale_trajectory}"
            + f", keep_ground={options.keep_ground}, camera_keys={len(options.camera_keys)}"
            + f", unseen_limbs_from_reference={options.unseen_limbs_from_reference}")


# ---------------------------------------------------------------------------------------------- CLI
def register(subparsers: argparse._SubParsersAction) -> None:
    """``python -m emosh retarget --driving D --reference R --out OUT``: shape swap, optionally aligned to a photo."""
    r = subparsers.add_parser("retarget", help="driver's motion on the reference person's body shape",
                              description="Shape swap: motion and camera from the driving track, body shape from the "
                                          "reference track; optionally placed where the reference person stands.")
    r.add_argument("--driving", required=True, help="driving video's track (.safetensors)")
    r.add_argument("--reference", required=True, help="reference image's track (.safetensors)")
    r.add_argument("--out", required=True, help="output track (.safetensors)")
    r.add_argument("--shape", choices=SHAPE_SOURCES, default="reference",
                   help="whose body shape (default: reference)")
    r.add_argument("--blend", type=float, default=0.5, help="with --shape blend: 0 = driver .. 1 = reference")
    r.add_argument("--expression-strength", type=float, default=1.0, help="0 neutral face, 1 as tracked, >1 more")
    r.add_argument("--hand-strength", type=float, default=1.0, help="0 relaxed hands, 1 as tracked")
    r.add_argument("--parts", default="body,hands,face,eyes",
                   help="comma list of driver motion parts to use (others rest): body,hands,face,eyes")
    r.add_argument("--no-scale-trajectory", action="store_true", help="keep the driver's root travel unscaled")
    r.add_argument("--no-keep-ground", action="store_true", help="do not match the driver's ground line")
    r.add_argument("--camera-keys", default="",
                   help="zoom/pan keyframes 'frame zoom [pan_x [pan_y]]' separated by ';' (e.g. '0 1; 60 1.5 0.1')")
    r.add_argument("--align-image", help="reference image: also place the person where they stand in it")
    r.add_argument("--width", type=int, help="with --align-image: output width (default: reference image width)")
    r.add_argument("--height", type=int, help="with --align-image: output height")
    r.add_argument("--anchor", type=int, default=0, help="with --align-image: frame aligned to the reference")
    r.add_argument("--keep-driver-orientation", action="store_true",
                   help="with --align-image: keep the driver's view of the body instead of turning it to face the "
                        "camera like the reference at the anchor frame")
    r.add_argument("--driver-unseen-limbs", action="store_true",
                   help="keep the tracker's guess for limbs the driver does not show (default: the reference's pose)")
    r.add_argument("--aligned-image-out", help="with --align-image: write the aligned reference image here (PNG)")
    r.add_argument("--body-dir", action="append", default=[],
                   help="folder whose body/ subfolder holds the SMPL-X + FLAME files, for smplx_flame tracks")
    r.add_argument("--device", default="cpu")
    r.set_defaults(func=run_retarget)


def run_retarget(args: argparse.Namespace) -> dict:
    from .body import load_body_model

    driving = EHMTrack.load(args.driving, args.device)
    reference = EHMTrack.load(args.reference, args.device)
    model = load_body_model(driving.backend, args.device, args.body_dir)
    options = RetargetOptions(shape=args.shape, blend=args.blend, expression_strength=args.expression_strength,
                              hand_strength=args.hand_strength,
                              parts=tuple(p.strip() for p in args.parts.split(",") if p.strip()),
                              scale_trajectory=not args.no_scale_trajectory, keep_ground=not args.no_keep_ground,
                              camera_keys=parse_camera_keys(args.camera_keys.replace(";", "\n")),
                              unseen_limbs_from_reference=not args.driver_unseen_limbs)
    out = retarget(model, driving, reference, options)
    summary = {"frames": out.num_frames, "out": str(args.out), "shape": options.shape}
    if args.align_image:
        from .align import spatial_align
        from .video import read_image, write_image

        image = read_image(args.align_image)
        height = args.height or image.shape[0]
        width = args.width or image.shape[1]
        aligned = spatial_align(model, image, reference, out, width=width, height=height, anchor=args.anchor,
                                match_orientation=not args.keep_driver_orientation)
        out = aligned.track
        summary.update(width=width, height=height, anchor=args.anchor)
        if args.aligned_image_out:
            write_image(args.aligned_image_out, aligned.reference_image)
            summary["aligned_image"] = str(args.aligned_image_out)
    elif args.width or args.height:
        raise InputError("--width/--height need --align-image (the render command resizes plain tracks)")
    out.save(args.out)
    return summary
