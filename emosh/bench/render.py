"""``python -m emosh.bench render --json``: renderer speed and retarget shape leakage.

ms_per_frame_hybrid: the hybrid control (body forward + z-buffer + shading + keypoint drawing) at 512×768, 16 frames
per batch, on the CPU, uint8 frames as written to video (target ≤ 40); ms_per_frame_hybrid_float: the same with
float 0..1 frames (ComfyUI IMAGE). shape_leakage: synthetic driver/reference pairs with very different bodies;
iou_retarget compares the retargeted silhouette with the reference body posed in the same motion (target ≥ 0.97),
iou_driver_baseline compares the driver's own silhouette with it (the leakage a 2D-pose method would carry).
real_leakage (skipped without ../shared/data/real): real photo pairs, a slim adult driver onto a heavy / curvy /
child / tall reference, tracked, retargeted and aligned end to end; leakage_iou_reference is the IoU of the output
silhouette at the anchor frame with the reference person's segmentation (a network no stage uses), beside
leakage_iou_driver_baseline, the driver's own body placed there (see real_leakage).
Wall times depend on what else runs on the machine: the load average is reported, and cpu_ms_per_frame_* gives the
CPU time this process spent per frame (all threads), which other jobs barely change.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..body import EHMTrack, load_body_model
from ..body.camera import default_focal, view_rotation
from ..body.model import BodyModel
from .common import emit, median_ms

SHAPES = {  # Anny phenotypes: gender, age, muscle, weight, height, proportions
    "slim_adult": (0.3, 0.6, 0.4, 0.05, 0.7, 0.5),
    "heavy_adult": (0.7, 0.65, 0.5, 1.0, 0.4, 0.5),
    "adult": (0.5, 0.6, 0.5, 0.5, 0.6, 0.5),
    "child": (0.5, 0.12, 0.5, 0.5, 0.5, 0.5),
}
PAIRS = (("slim_adult", "heavy_adult"), ("heavy_adult", "slim_adult"), ("adult", "child"))


def dance_track(model: BodyModel, shape: torch.Tensor, frames: int, height: int = 768, width: int = 512,
                distance: float = 3.0) -> EHMTrack:
    """A smooth synthetic performance (arm waves, elbow bends, torso turn, knee bends) seen by a fixed camera."""
    motion = model.zero_motion(frames)
    t = torch.linspace(0.0, 2.0 * math.pi, frames + 1)[:-1]
    names = model.pose_labels

    def rotate(bone: str, axis: int, angle: torch.Tensor) -> None:
        if bone in names:
            motion["pose"][:, names.index(bone), axis] = angle.to(model.device)

    rotate("upperarm01.L", 2, -0.9 + 0.5 * torch.sin(t))
    rotate("upperarm01.R", 2, 0.9 - 0.5 * torch.sin(t + 1.0))
    rotate("lowerarm01.L", 1, -0.6 - 0.4 * torch.sin(2 * t))
    rotate("lowerarm01.R", 1, 0.6 + 0.4 * torch.cos(2 * t))
    rotate("spine03", 2, 0.3 * torch.sin(t))
    rotate("upperleg01.L", 0, 0.25 * (1 - torch.cos(2 * t)))
    rotate("lowerleg01.L", 0, -0.5 * (1 - torch.cos(2 * t)))
    motion["global_orient"][:, 2] = (0.4 * torch.sin(t)).to(model.device)
    if "jawOpen" in model.expression_labels:
        motion["expression"][:, model.expression_labels.index("jawOpen")] = (0.3 + 0.3 * torch.sin(3 * t)).to(
            model.device)
    return EHMTrack(
        backend=model.backend, backend_version=model.version, shape=shape.to(model.device), **motion,
        focal=torch.full((frames,), default_focal((height, width)), device=model.device),
        cam_R=view_rotation(model.up_axis).to(model.device).expand(frames, 3, 3).clone(),
        cam_t=torch.tensor([0.0, 0.15, distance], device=model.device).expand(frames, 3).clone(),
        confidence=torch.ones(frames, 553, device=model.device),
        detected=torch.ones(frames, dtype=torch.bool, device=model.device), image_size=(height, width), fps=25.0)


def ground_truth(model: BodyModel, driver: EHMTrack, shape: torch.Tensor) -> EHMTrack:
    """The reference body in the driver's motion, standing on the driver's floor (constant offset by leg length)."""
    from ..retarget import leg_length

    translation = driver.translation.clone()
    translation[:, model.up_axis] += leg_length(model, shape) - leg_length(model, driver.shape)
    return driver.replace(shape=shape, translation=translation)


def mask_iou(model: BodyModel, a: EHMTrack, b: EHMTrack) -> float:
    from ..render.renderer import rasterize_track

    size = a.image_size
    mask_a = rasterize_track(model, a, a.focal, size)[2].mask
    mask_b = rasterize_track(model, b, b.focal, size)[2].mask
    inter = (mask_a & mask_b).flatten(1).sum(1).float()
    union = (mask_a | mask_b).flatten(1).sum(1).float().clamp(min=1)
    return float((inter / union).mean())


REAL_DRIVER = "ref_fullbody_b.jpg"  # a slim adult, head to feet
REAL_REFERENCES = ("photo_plus_size_woman_1.jpg", "photo_plus_size_woman_4_red_dress.png",
                   "photo_child_girl_elf_costume.png", "photo_tall_athletic_man_basketball.png")


def real_leakage(model: BodyModel, real_dir, height: int = 768, overlays=None) -> dict:
    """Shape leakage on real photos, end to end: the reference photo and the slim driver's photo are both tracked,
    the driver is retargeted onto the reference and spatially aligned to the reference photo, and the output mesh's
    silhouette at the anchor frame is compared (IoU) with the reference person's segmentation (MediaPipe's selfie
    segmenter, which no stage of the pipeline uses). The driving frame strikes the reference photo's pose, so the
    only difference between the output and ``leakage_iou_driver_baseline`` (the driver's own body, aligned the same
    way: what a 2D-pose method carries) is the body the pipeline chose. ``overlays``: a folder for one PNG per pair
    (outlines on the aligned photo: segmentation blue, output green, driver's body red)."""
    from ..align import spatial_align
    from ..render.renderer import rasterize_track
    from ..retarget import retarget
    from ..track.silhouette import mask_scores
    from ..track.tracker import track_file
    from ..video import read_image
    from .tracker import person_mask

    driver = track_file(real_dir / REAL_DRIVER, model)
    out: dict = {}
    for name in REAL_REFERENCES:
        path = real_dir / name
        image = read_image(path)
        reference = track_file(path, model)
        driving = driver.replace(pose=reference.pose, global_orient=reference.global_orient,
                                 expression=reference.expression)
        width = int(round(height * image.shape[1] / image.shape[0] / 16.0)) * 16
        row, masks, person = {}, [], None
        for key, track in (("leakage_iou_reference", retarget(model, driving, reference)),
                           ("leakage_iou_driver_baseline", driving)):
            aligned = spatial_align(model, image, reference, track, width, height)
            mesh = rasterize_track(model, aligned.track.frames(0, 1), aligned.track.focal[:1], (height, width))[2]
            masks.append(mesh.mask[0].cpu().numpy())
            if person is None:  # the same aligned photo for both bodies: segment it once
                person = person_mask(aligned.reference_image)
            row[key] = round(mask_scores(masks[-1], person)["silhouette_iou"], 3)
        key = f"{REAL_DRIVER.split('.')[0]}->{path.stem}"
        out[key] = row
        if overlays is not None:
            _save_outlines(Path(overlays) / f"leakage_{path.stem}.png", aligned.reference_image,
                           [(person, (0, 80, 255)), (masks[0], (0, 255, 0)), (masks[1], (255, 0, 0))])
    return out


def _save_outlines(path: Path, image: np.ndarray, masks: list[tuple[np.ndarray, tuple[int, int, int]]]) -> None:
    """Write ``image`` with the outline of each boolean mask drawn in its RGB colour."""
    import cv2

    canvas = np.ascontiguousarray(image.copy())
    for mask, colour in masks:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, colour, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), canvas[..., ::-1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m emosh.bench render")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--frames", type=int, default=16, help="frames per leakage clip")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-real", action="store_true", help="skip the real-photo leakage pairs")
    parser.add_argument("--overlays", help="folder for the real pairs' outline PNGs")
    args = parser.parse_args(argv)
    from ..render.renderer import render_track
    from ..retarget import retarget

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_body_model("anny", args.device)
    result: dict = {"device": args.device, "threads": torch.get_num_threads(), "width": 512, "height": 768,
                    "batch_size": 16, "load_avg_1min_before": round(os.getloadavg()[0], 2)}
    track = dance_track(model, torch.tensor(SHAPES["adult"]), 16)
    for name, as_uint8 in (("ms_per_frame_hybrid", True), ("ms_per_frame_hybrid_float", False)):
        cpu_start = time.process_time()
        batch_ms = median_ms(lambda: list(render_track(model, track, ("hybrid",), batch_size=16, as_uint8=as_uint8)),
                             runs=args.runs, warmup=1)
        result[name] = round(batch_ms / 16, 2)
        # CPU time of this process (all its threads) per frame: insensitive to other jobs sharing the cores.
        result["cpu_" + name] = round((time.process_time() - cpu_start) * 1000.0 / (16 * (args.runs + 1)), 2)
    result["target_ms_per_frame_hybrid"] = 40
    leakage = {}
    for driver_name, reference_name in PAIRS:
        driver = dance_track(model, torch.tensor(SHAPES[driver_name]), args.frames)
        reference = dance_track(model, torch.tensor(SHAPES[reference_name]), 1)
        truth = ground_truth(model, driver, reference.shape)
        out = retarget(model, driver, reference)
        leakage[f"{driver_name}->{reference_name}"] = {
            "iou_retarget": round(mask_iou(model, out, truth), 4),
            "iou_driver_baseline": round(mask_iou(model, driver, truth), 4),
        }
    result["shape_leakage"] = leakage
    result["iou_retarget"] = min(v["iou_retarget"] for v in leakage.values())
    result["iou_driver_baseline"] = max(v["iou_driver_baseline"] for v in leakage.values())
    result["target_iou_retarget"] = 0.97
    from .tracker import REAL_DIR

    if REAL_DIR.is_dir() and not args.skip_real:
        pairs = real_leakage(model, REAL_DIR, overlays=args.overlays)
        result["real_leakage"] = pairs
        result["leakage_iou_reference"] = min(v["leakage_iou_reference"] for v in pairs.values())
        result["leakage_margin_over_driver"] = round(min(v["leakage_iou_reference"] - v["leakage_iou_driver_baseline"]
                                                         for v in pairs.values()), 3)
        result["targets_real_leakage"] = {"leakage_iou_reference": 0.85, "leakage_margin_over_driver": 0.1}
    else:
        result["real_leakage"] = f"skipped: no photos in {REAL_DIR}"
    result["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    emit(result)
    return 0
