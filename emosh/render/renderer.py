"""Mesh Condition Renderer: an ``EHMTrack`` → control frames (hybrid, keypoints, normal, depth, mask, parts, scail).

Frames stream in batches, so a long track needs memory for one batch only. Each batch: body model forward →
camera (:mod:`emosh.body.camera`) → z-buffer (:mod:`emosh.body.raster`) → maps (:mod:`emosh.body.shading`);
keypoints come from the one landmark source, ``emosh.body.landmarks.mesh_landmarks``, and are drawn with
OpenCV (:mod:`emosh.render.draw`) after a visibility test against the z-buffer; ``scail`` ray-traces capsules
between the body's joints (:mod:`emosh.render.scail`) under the same keypoint overlay.

Output size: rendering at ``width × height`` different from ``track.image_size`` scales the focal length by
``max(width / W, height / H)`` about the image centre, i.e. the track's frame is resized to cover the output and
centre-cropped (ComfyUI's "center" crop resize), so controls line up with a driving video resized the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterator, Sequence

import numpy as np
import torch

from ..body import shading
from ..body.camera import project_camera_points, to_camera
from ..body.landmarks import mesh_landmarks
from ..body.model import BodyModel
from ..body.raster import rasterize
from ..body.track import EHMTrack
from . import draw, scail

# The render modes: the one list the CLI and the ComfyUI nodes offer.
MODES = ("hybrid", "keypoints", "normal", "depth", "mask", "parts", "scail", "scail2_mask", "scail2_mask_white")
# SCAIL-2's colour for its first identity (ComfyUI's SCAIL2ColoredMask palette; the model was trained on exactly
# these colours): the body's silhouette in it, on black (animation mode's pose_video_mask) or on white (replacement
# mode's pose_video_mask, and animation mode's reference_image_mask).
SCAIL2_IDENTITY_RGB = (0.0, 0.0, 1.0)


@dataclass
class RenderBatch:
    """Frames ``start .. start + n`` of every requested mode: [n, H, W, 3] (mask: [n, H, W]), float in [0, 1] or
    uint8 0..255 when rendered with ``as_uint8=True``."""

    start: int
    frames: dict[str, torch.Tensor]


def output_focal(track: EHMTrack, height: int, width: int) -> torch.Tensor:
    """Per-frame focal length [T] for rendering the track at ``height × width`` (cover + centre crop)."""
    h, w = track.image_size
    return track.focal * max(width / w, height / h)


def render_track(model: BodyModel, track: EHMTrack, modes: Sequence[str] = ("hybrid",), width: int | None = None,
                 height: int | None = None, batch_size: int = 16, device: torch.device | str | None = None,
                 keypoint_style: str = "wan_animate", as_uint8: bool = False,
                 peer_pipeline: bool = False) -> Iterator[RenderBatch]:
    """Yield :class:`RenderBatch` es of ``modes`` for every frame of ``track``.

    ``width``/``height`` default to the track's image size. ``keypoint_style`` picks the drawing of the
    ``keypoints`` mode (one of :data:`emosh.render.draw.KEYPOINT_STYLES`: wan_animate, dwpose, unianimate).
    ``peer_pipeline`` also applies the consumer's own pipeline around the drawing where it has one (unianimate:
    keypoints normalised by the track's frame and stretched onto its 512×768 canvas, a JPEG round trip at
    quality 95, then a bilinear resize to the output size as its loader does; which keypoints are hidden is still
    judged on the output frame; dwpose: drawn at 512 px short side and resized, as DWPose's annotator does);
    otherwise keypoints are drawn losslessly on the output frame, lined up with the other modes.
    ``as_uint8`` returns 0..255 frames (what video files take; skips a float conversion of the drawn modes).
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown render modes {unknown}; choose from {MODES}")
    if keypoint_style not in draw.KEYPOINT_STYLES:
        raise ValueError(f"unknown keypoint style {keypoint_style!r}; choose from {draw.KEYPOINT_STYLES}")
    track.check_backend(model.backend)
    height = int(height or track.image_size[0])
    width = int(width or track.image_size[1])
    device = torch.device(device) if device is not None else model.device
    renderer = _FrameRenderer(model, height, width, device, track.image_size if peer_pipeline else None)
    focal = output_focal(track, height, width)
    if "scail" in modes:
        renderer.scail_depth = scail.depth_range(torch.cat([
            renderer.scail_points(track.frames(start, start + batch_size).to(device))
            for start in range(0, track.num_frames, batch_size)]))
    for start in range(0, track.num_frames, batch_size):
        part = track.frames(start, start + batch_size).to(device)
        frames = renderer.render(part, focal[start:start + batch_size].to(device), modes, keypoint_style)
        yield RenderBatch(start, {mode: _convert(image, as_uint8) for mode, image in frames.items()})


def _convert(image: torch.Tensor, as_uint8: bool) -> torch.Tensor:
    if as_uint8:
        return image if image.dtype == torch.uint8 else (image.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    return image.float() / 255.0 if image.dtype == torch.uint8 else image


def render_all(model: BodyModel, track: EHMTrack, modes: Sequence[str] = ("hybrid",), **kwargs) -> dict[str, torch.Tensor]:
    """Every frame of ``modes`` concatenated (convenient for short tracks; use :func:`render_track` for long ones)."""
    chunks: dict[str, list[torch.Tensor]] = {m: [] for m in modes}
    for batch in render_track(model, track, modes, **kwargs):
        for mode, frames in batch.frames.items():
            chunks[mode].append(frames)
    return {mode: torch.cat(frames) for mode, frames in chunks.items()}


class _FrameRenderer:
    """Per-call constants (faces, colours, visibility tables) on the render device.

    ``source_size`` (H, W) of the track's frame turns on the consumers' own pipelines (``peer_pipeline``).
    ``scail_depth`` is the clip's (near, far) depth-factor range, set before rendering the scail mode.
    """

    def __init__(self, model: BodyModel, height: int, width: int, device: torch.device,
                 source_size: tuple[int, int] | None = None):
        self.model = model
        self.size = (height, width)
        self.device = device
        self.source_size = source_size
        self.faces = model.faces.to(device)
        self.part_labels = model.part_labels.to(device)
        self.colors = shading.semantic_colors(model).to(device)
        self.see_through = draw.see_through_table(model.part_names, device)
        self.scail_depth: tuple[float, float] | None = None

    @cached_property
    def scail_joints(self) -> list[int]:
        """The body model's joints in SMPL slot order (looked up only when the scail mode is rendered)."""
        return scail.joint_indices(self.model)

    def scail_points(self, track: EHMTrack) -> torch.Tensor:
        """The SMPL slots of every frame of ``track`` [T, 14, 3], camera frame, mm."""
        with torch.no_grad():
            output = self.model(track.shape, **track.motion())
            landmarks = to_camera(mesh_landmarks(self.model, output).to(self.device), track.cam_R, track.cam_t)
        return self._scail_slots(output, landmarks, track)

    def _scail_slots(self, output, landmarks: torch.Tensor, track: EHMTrack) -> torch.Tensor:
        """Slots [B, 14, 3] (mm) from a body ``output`` and its camera-frame ``landmarks`` [B, 553, 3]."""
        joints = to_camera(output.joints.to(self.device), track.cam_R, track.cam_t)
        return scail.slot_points(joints, landmarks, self.scail_joints)

    def render(self, track: EHMTrack, focal: torch.Tensor, modes: Sequence[str],
               keypoint_style: str) -> dict[str, torch.Tensor]:
        output, cam, fragments = rasterize_track(self.model, track, focal, self.size, self.device)
        with torch.no_grad():
            out: dict[str, torch.Tensor] = {}
            if "hybrid" in modes or "normal" in modes:
                cam_normals = shading.vertex_normals(cam, self.faces)
                if "hybrid" in modes:
                    out["hybrid"] = shading.shaded(fragments, self.faces, self.colors, cam_normals, as_uint8=True)
                if "normal" in modes:
                    out["normal"] = shading.normal_map(fragments, self.faces, cam_normals)
            if "depth" in modes:
                pelvis = to_camera(output.joints[:, :1].to(self.device), track.cam_R, track.cam_t)[:, 0, 2]
                out["depth"] = shading.depth_map(fragments, pelvis)
            if "mask" in modes:
                out["mask"] = fragments.mask.float()
            for mode, background in (("scail2_mask", 0.0), ("scail2_mask_white", 1.0)):
                if mode in modes:
                    colour = torch.tensor(SCAIL2_IDENTITY_RGB, device=self.device)
                    canvas = torch.full((*fragments.mask.shape, 3), background, device=self.device)
                    out[mode] = torch.where(fragments.mask[..., None], colour, canvas)
            if "parts" in modes:
                out["parts"] = shading.parts_map(fragments, self.faces, self.part_labels)
            if "hybrid" in modes or "keypoints" in modes or "scail" in modes:
                landmarks = to_camera(mesh_landmarks(self.model, output).to(self.device), track.cam_R, track.cam_t)
                kp_pixels = project_camera_points(landmarks, focal, self.size)
                visible = draw.keypoint_visibility(fragments, kp_pixels, landmarks, self.part_labels, self.faces,
                                                   self.see_through)
                if "scail" in modes:
                    out["scail"] = scail.render_capsules(self._scail_slots(output, landmarks, track), focal,
                                                         self.size, self.scail_depth)
                self._draw(out, modes, keypoint_style, kp_pixels, visible, landmarks, track.focal)
        return {m: out[m] for m in modes}

    def _draw(self, out: dict[str, torch.Tensor], modes: Sequence[str], style: str, pixels: torch.Tensor,
              visible: torch.Tensor, camera_points: torch.Tensor, source_focal: torch.Tensor) -> None:
        """OpenCV drawing needs host arrays: one transfer per batch, then back to the render device."""
        points, vis = pixels.cpu().numpy(), visible.cpu().numpy()
        height, width = self.size
        if "hybrid" in modes:
            canvases = out["hybrid"].cpu().numpy()
            for i in range(canvases.shape[0]):
                draw.draw_frame(canvases[i], points[i], vis[i], draw.STYLES["hybrid"])
            out["hybrid"] = torch.from_numpy(canvases).to(self.device)
        if "scail" in modes:
            overlay = np.zeros((points.shape[0], height, width, 3), np.uint8)
            for i in range(overlay.shape[0]):
                draw.draw_frame(overlay[i], points[i], vis[i], draw.STYLES["scail"])
            overlay_t = torch.from_numpy(overlay).to(self.device)
            out["scail"] = torch.where(overlay_t != 0, overlay_t, out["scail"])  # per channel, as SCAIL pastes
        if "keypoints" in modes:
            pose_style = draw.STYLES[style]
            if self.source_size is not None and pose_style.canvas is not None:
                source = project_camera_points(camera_points, source_focal.to(self.device), self.source_size)
                canvases = draw.peer_frames(source.cpu().numpy(), vis, pose_style, self.source_size, self.size)
            elif self.source_size is not None and pose_style.draw_short_side is not None:
                canvases = draw.short_side_frames(points, vis, pose_style, self.size)
            else:
                canvases = np.zeros((points.shape[0], height, width, 3), np.uint8)
                for i in range(canvases.shape[0]):
                    draw.draw_frame(canvases[i], points[i], vis[i], pose_style)
            out["keypoints"] = torch.from_numpy(canvases).to(self.device)


def rasterize_track(model: BodyModel, track: EHMTrack, focal: torch.Tensor, size: tuple[int, int],
                    device: torch.device | None = None):
    """Pose, project and z-buffer every frame of ``track`` (keep it short): (body output, camera points, fragments)."""
    device = device or model.device
    with torch.no_grad():
        output = model(track.shape, **track.motion())
        cam = to_camera(output.vertices.to(device), track.cam_R.to(device), track.cam_t.to(device))
        pixels = project_camera_points(cam, focal.to(device), size)
        fragments = rasterize(torch.cat([pixels, cam[..., 2:]], dim=-1), model.faces.to(device), size,
                              cull_backfaces=True)
    return output, cam, fragments
