"""Retarget / align / render nodes: Shape Swap / Retarget, Spatial Align, Mesh Condition Renderer."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..emosh import retarget
from ..emosh.align import spatial_align
from ..emosh.errors import InputError
from ..emosh.render import renderer
from ..emosh.render.draw import KEYPOINT_STYLES
from .common import (ROOT_CATEGORY, EhmModel, EhmTrack, Progress, as_image, check_image, image_to_uint8,
                     mask_from_float, uint8_to_image)


class ShapeSwapRetarget(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        def part(name: str, what: str) -> io.Boolean.Input:
            return io.Boolean.Input(name, default=True, tooltip=f"Use the driver's {what}; off = that part rests.")

        return io.Schema(
            node_id="EmoshShapeSwapRetarget",
            display_name="Shape Swap / Retarget",
            category=f"{ROOT_CATEGORY}/retarget",
            description=("Shape swap: the driving track's motion (body, hands, face, camera) on the reference "
                         "person's body shape, with bone-length and scale compensation so feet stay on the ground "
                         "and hands reach the same places. The disentangled EHM makes this a swap of fields, not a "
                         "pose-transfer guess."),
            inputs=[
                EhmModel.Input("body_model", tooltip="The body model both tracks were made with."),
                EhmTrack.Input("driving_track", tooltip="Whose motion: the driving video's track."),
                EhmTrack.Input("reference_track", tooltip="Whose body shape: the reference image's track."),
                io.Combo.Input("shape", options=["reference", "driver", "blend"], default="reference",
                               tooltip="Whose body: reference (shape swap), driver (keep the driver's body), blend "
                                       "(mix)."),
                io.Float.Input("blend", default=1.0, min=0.0, max=1.0, step=0.05,
                               display_mode=io.NumberDisplay.slider,
                               tooltip="With shape = blend: 0 = driver's body, 1 = reference's body."),
                io.Float.Input("expression_strength", default=1.0, min=0.0, max=3.0, step=0.05,
                               tooltip="Driver's facial expression: 0 = neutral, 1 = as tracked."),
                io.Float.Input("hand_strength", default=1.0, min=0.0, max=3.0, step=0.05,
                               tooltip="Driver's finger motion: 0 = relaxed hands, 1 = as tracked."),
                part("body", "body and head motion"),
                part("hands", "finger motion"),
                part("face", "facial expression"),
                part("eyes", "eye gaze"),
                io.Boolean.Input("scale_trajectory", default=True,
                                 tooltip="Scale the travel of the body by the leg-length ratio (a shorter person "
                                         "takes shorter steps)."),
                io.Boolean.Input("keep_ground", default=True,
                                 tooltip="Keep the lowest foot on the driver's ground line (no floating or sinking "
                                         "when leg lengths differ)."),
                io.Boolean.Input("unseen_limbs_from_reference", default=True, optional=True,
                                 tooltip="Arms and legs the driver does not show (out of frame, e.g. a talking head) "
                                         "take the reference photo's pose instead of the tracker's guess (arms held "
                                         "out)."),
            ],
            outputs=[EhmTrack.Output(display_name="track",
                                     tooltip="The driver's motion performed by the reference's body shape.")],
        )

    @classmethod
    def execute(cls, body_model, driving_track, reference_track, shape: str, blend: float,
                expression_strength: float, hand_strength: float, body: bool, hands: bool, face: bool, eyes: bool,
                scale_trajectory: bool, keep_ground: bool,
                unseen_limbs_from_reference: bool | None = None) -> io.NodeOutput:
        chosen = {"body": body, "hands": hands, "face": face, "eyes": eyes}
        parts = tuple(part for part, on in chosen.items() if on)
        options = retarget.RetargetOptions(shape=shape, blend=blend, expression_strength=expression_strength,
                                           hand_strength=hand_strength, parts=parts,
                                           scale_trajectory=scale_trajectory, keep_ground=keep_ground,
                                           unseen_limbs_from_reference=unseen_limbs_from_reference is not False)
        return io.NodeOutput(retarget.retarget(body_model, driving_track, reference_track, options).to("cpu"))


class SpatialAlign(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmoshSpatialAlign",
            display_name="Spatial Align",
            category=f"{ROOT_CATEGORY}/retarget",
            description=("Places the retargeted motion where the reference person stands in the reference image, at "
                         "the output size (the reference image is resized to cover it and centre-cropped), so the "
                         "first frame lines up with the reference. Also returns that resized reference and its "
                         "person mask."),
            inputs=[
                EhmModel.Input("body_model", tooltip="The body model the tracks were made with."),
                io.Image.Input("reference_image", tooltip="The reference photo (first image is used)."),
                EhmTrack.Input("reference_track", tooltip="The reference photo's track (EHM Tracker, reference "
                                                          "mode)."),
                EhmTrack.Input("track", tooltip="The motion to place (usually Shape Swap / Retarget's output)."),
                io.Int.Input("width", default=480, min=64, max=4096, step=16,
                             tooltip="Output width in pixels (multiples of 16 suit video models and codecs; Wan: "
                                     "480×832 portrait, 832×480 landscape)."),
                io.Int.Input("height", default=832, min=64, max=4096, step=16,
                             tooltip="Output height in pixels. The reference is resized to cover width × height and "
                                     "centre-cropped, so match its aspect to keep the whole person."),
                io.Int.Input("anchor_frame", default=0, min=0, max=1000000,
                             tooltip="Frame of the motion that is placed exactly on the reference pose (usually the "
                                     "first)."),
                io.Boolean.Input("match_orientation", default=True, optional=True,
                                 tooltip="At the anchor frame the body faces the camera like the reference person "
                                         "(later turns are relative). Off: keep the driver's view of the body, e.g. "
                                         "filmed from below."),
            ],
            outputs=[
                EhmTrack.Output(display_name="track", tooltip="The track in output-image coordinates."),
                io.Image.Output(display_name="reference", tooltip="The reference image at the output size (input "
                                                                  "for the sampler / preview background)."),
                io.Mask.Output(display_name="reference_mask", tooltip="Where the reference person is in that image "
                                                                      "(1 = person)."),
            ],
        )

    @classmethod
    def execute(cls, body_model, reference_image: torch.Tensor, reference_track, track, width: int, height: int,
                anchor_frame: int, match_orientation: bool | None = None) -> io.NodeOutput:
        check_image(reference_image, "reference_image")
        aligned = spatial_align(body_model, image_to_uint8(reference_image[:1])[0], reference_track,
                                track, width=width, height=height, anchor=anchor_frame,
                                match_orientation=match_orientation is not False)
        return io.NodeOutput(aligned.track.to("cpu"), uint8_to_image(aligned.reference_image),
                             mask_from_float(aligned.reference_mask[None]))


# The renderer's modes beyond the five fixed outputs, one at a time on the 'extra' output (appended last, so
# workflows saved with five outputs keep their links).
EXTRA_MODES = tuple(m for m in renderer.MODES if m not in ("hybrid", "keypoints", "normal", "depth", "mask"))


class MeshConditionRenderer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmoshMeshConditionRenderer",
            display_name="Mesh Condition Renderer",
            category=f"{ROOT_CATEGORY}/render",
            description=("Renders a track as control videos: hybrid (semantically coloured mesh + drawn keypoints, "
                         "the EMOSH signal), keypoints only (OpenPose/DWPose style for Wan-Animate's pose_video, "
                         "UniAnimate...), normals, depth and the person mask. Streams in batches, so long videos fit "
                         "in memory."),
            inputs=[
                EhmModel.Input("body_model", tooltip="The body model the track was made with."),
                EhmTrack.Input("track", tooltip="The track to render (usually Spatial Align's output)."),
                io.Int.Input("width", default=0, min=0, max=4096, step=16,
                             tooltip="Output width; 0 = the track's image width. Other sizes cover + centre-crop, "
                                     "like ComfyUI's center-crop resize."),
                io.Int.Input("height", default=0, min=0, max=4096, step=16,
                             tooltip="Output height; 0 = the track's image height."),
                io.Combo.Input("keypoint_style", options=list(KEYPOINT_STYLES), default="wan_animate",
                               tooltip="Drawing of the keypoints output: wan_animate (Wan 2.2 Animate pose_video), "
                                       "dwpose (Animate Anyone, with face dots), unianimate (red/blue swapped as "
                                       "UniAnimate reads it)."),
                io.Int.Input("batch_size", default=8, min=1, max=256,
                             tooltip="Frames rendered at once (memory vs speed)."),
                io.Combo.Input("extra_mode", options=list(EXTRA_MODES), default=EXTRA_MODES[0], optional=True,
                               tooltip="What the 'extra' output renders: scail2_mask / scail2_mask_white (the body "
                                       "in SCAIL-2's identity blue on black / white: WanSCAILToVideo's "
                                       "pose_video_mask, and reference_image_mask from the reference track), scail "
                                       "(SCAIL-Preview's 3D-capsule pose video, ~0.75 s a frame on a CPU), parts "
                                       "(body-part colours)."),
            ],
            outputs=[
                io.Image.Output(display_name="hybrid", tooltip="Shaded mesh + keypoints on white: the EMOSH hybrid "
                                                               "control."),
                io.Image.Output(display_name="keypoints", tooltip="Keypoints only on black, in the chosen style."),
                io.Image.Output(display_name="normal", tooltip="Camera-space normals (RGB = XYZ)."),
                io.Image.Output(display_name="depth", tooltip="Depth, near = bright."),
                io.Mask.Output(display_name="mask", tooltip="The person's silhouette (1 = person)."),
                io.Image.Output(display_name="extra", tooltip="The render chosen in extra_mode."),
            ],
        )

    @classmethod
    def execute(cls, body_model, track, width: int, height: int, keypoint_style: str,
                batch_size: int, extra_mode: str | None = None) -> io.NodeOutput:
        extra_mode = extra_mode or EXTRA_MODES[0]  # a prompt saved before the input existed
        if extra_mode not in EXTRA_MODES:
            raise InputError(f"extra_mode must be one of {EXTRA_MODES}, got {extra_mode!r}")
        modes = ("hybrid", "keypoints", "normal", "depth", "mask", extra_mode)
        bar = Progress(track.num_frames)
        chunks: dict[str, list[torch.Tensor]] = {m: [] for m in modes}
        for batch in renderer.render_track(body_model, track, modes, width=width or None, height=height or None,
                                           batch_size=batch_size, keypoint_style=keypoint_style):
            bar.cancel()
            for mode in modes:
                frames = batch.frames[mode]
                chunks[mode].append(mask_from_float(frames) if mode == "mask" else as_image(frames))
            bar.progress(batch.start + batch.frames[modes[0]].shape[0])
        out = {m: torch.cat(chunks[m]) for m in modes}
        return io.NodeOutput(out["hybrid"], out["keypoints"], out["normal"], out["depth"], out["mask"],
                             out[extra_mode])


NODES = [ShapeSwapRetarget, SpatialAlign, MeshConditionRenderer]
