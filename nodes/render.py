"""Retarget / align / render nodes: Shape Swap / Retarget, Spatial Align, Mesh Condition Renderer."""
from __future__ import annotations

import torch

from .common import (EHM_MODEL, EHM_TRACK, ROOT_CATEGORY, Progress, as_image, check_image, image_to_uint8,
                     lib, mask_from_float, uint8_to_image)


class ShapeSwapRetarget:
    DESCRIPTION = ("Shape swap: the driving track's motion (body, hands, face, camera) on the reference person's body "
                   "shape, with bone-length and scale compensation so feet stay on the ground and hands reach the same "
                   "places. The disentangled EHM makes this a swap of fields, not a pose-transfer guess.")
    CATEGORY = f"{ROOT_CATEGORY}/retarget"
    FUNCTION = "retarget"
    RETURN_TYPES = (EHM_TRACK,)
    RETURN_NAMES = ("track",)
    OUTPUT_TOOLTIPS = ("The driver's motion performed by the reference's body shape.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        def part(what: str) -> tuple:
            return ("BOOLEAN", {"default": True, "tooltip": f"Use the driver's {what}; off = that part rests."})

        return {"required": {
            "body_model": (EHM_MODEL, {"tooltip": "The body model both tracks were made with."}),
            "driving_track": (EHM_TRACK, {"tooltip": "Whose motion: the driving video's track."}),
            "reference_track": (EHM_TRACK, {"tooltip": "Whose body shape: the reference image's track."}),
            "shape": (["reference", "driver", "blend"], {
                "default": "reference",
                "tooltip": "Whose body: reference (shape swap), driver (keep the driver's body), blend (mix)."}),
            "blend": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05, "display": "slider",
                                "tooltip": "With shape = blend: 0 = driver's body, 1 = reference's body."}),
            "expression_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05,
                                              "tooltip": "Driver's facial expression: 0 = neutral, 1 = as tracked."}),
            "hand_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05,
                                        "tooltip": "Driver's finger motion: 0 = relaxed hands, 1 = as tracked."}),
            "body": part("body and head motion"),
            "hands": part("finger motion"),
            "face": part("facial expression"),
            "eyes": part("eye gaze"),
            "scale_trajectory": ("BOOLEAN", {"default": True,
                                             "tooltip": "Scale the travel of the body by the leg-length ratio (a "
                                                        "shorter person takes shorter steps)."}),
            "keep_ground": ("BOOLEAN", {"default": True,
                                        "tooltip": "Keep the lowest foot on the driver's ground line (no floating "
                                                   "or sinking when leg lengths differ)."}),
        }, "optional": {
            "unseen_limbs_from_reference": ("BOOLEAN", {
                "default": True,
                "tooltip": "Arms and legs the driver does not show (out of frame, e.g. a talking head) take the "
                           "reference photo's pose instead of the tracker's guess (arms held out)."}),
        }}

    def retarget(self, body_model, driving_track, reference_track, shape: str, blend: float,
                 expression_strength: float, hand_strength: float, body: bool, hands: bool, face: bool, eyes: bool,
                 scale_trajectory: bool, keep_ground: bool, unseen_limbs_from_reference: bool | None = None):
        retarget = lib("retarget")
        chosen = {"body": body, "hands": hands, "face": face, "eyes": eyes}
        parts = tuple(part for part, on in chosen.items() if on)
        options = retarget.RetargetOptions(shape=shape, blend=blend, expression_strength=expression_strength,
                                           hand_strength=hand_strength, parts=parts,
                                           scale_trajectory=scale_trajectory, keep_ground=keep_ground,
                                           unseen_limbs_from_reference=unseen_limbs_from_reference is not False)
        return (retarget.retarget(body_model, driving_track, reference_track, options).to("cpu"),)


class SpatialAlign:
    DESCRIPTION = ("Places the retargeted motion where the reference person stands in the reference image, at the "
                   "output size (the reference image is resized to cover it and centre-cropped), so the first frame "
                   "lines up with the reference. Also returns that resized reference and its person mask.")
    CATEGORY = f"{ROOT_CATEGORY}/retarget"
    FUNCTION = "align"
    RETURN_TYPES = (EHM_TRACK, "IMAGE", "MASK")
    RETURN_NAMES = ("track", "reference", "reference_mask")
    OUTPUT_TOOLTIPS = ("The track in output-image coordinates.",
                       "The reference image at the output size (input for the sampler / preview background).",
                       "Where the reference person is in that image (1 = person).")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "body_model": (EHM_MODEL, {"tooltip": "The body model the tracks were made with."}),
            "reference_image": ("IMAGE", {"tooltip": "The reference photo (first image is used)."}),
            "reference_track": (EHM_TRACK, {"tooltip": "The reference photo's track (EHM Tracker, reference mode)."}),
            "track": (EHM_TRACK, {"tooltip": "The motion to place (usually Shape Swap / Retarget's output)."}),
            "width": ("INT", {"default": 480, "min": 64, "max": 4096, "step": 16,
                              "tooltip": "Output width in pixels (multiples of 16 suit video models and codecs; "
                                         "Wan: 480×832 portrait, 832×480 landscape)."}),
            "height": ("INT", {"default": 832, "min": 64, "max": 4096, "step": 16,
                               "tooltip": "Output height in pixels. The reference is resized to cover width × height "
                                          "and centre-cropped, so match its aspect to keep the whole person."}),
            "anchor_frame": ("INT", {"default": 0, "min": 0, "max": 1000000,
                                     "tooltip": "Frame of the motion that is placed exactly on the reference pose "
                                                "(usually the first)."}),
        }, "optional": {
            "match_orientation": ("BOOLEAN", {
                "default": True,
                "tooltip": "At the anchor frame the body faces the camera like the reference person (later turns "
                           "are relative). Off: keep the driver's view of the body, e.g. filmed from below."}),
        }}

    def align(self, body_model, reference_image: torch.Tensor, reference_track, track, width: int, height: int,
              anchor_frame: int, match_orientation: bool | None = None):
        check_image(reference_image, "reference_image")
        aligned = lib("align").spatial_align(body_model, image_to_uint8(reference_image[:1])[0], reference_track,
                                             track, width=width, height=height, anchor=anchor_frame,
                                             match_orientation=match_orientation is not False)
        return (aligned.track.to("cpu"), uint8_to_image(aligned.reference_image),
                mask_from_float(aligned.reference_mask[None]))


class MeshConditionRenderer:
    DESCRIPTION = ("Renders a track as control videos: hybrid (semantically coloured mesh + drawn keypoints, the EMOSH "
                   "signal), keypoints only (OpenPose/DWPose style for Wan-Animate's pose_video, UniAnimate...), "
                   "normals, depth and the person mask. Streams in batches, so long videos fit in memory.")
    CATEGORY = f"{ROOT_CATEGORY}/render"
    FUNCTION = "render"
    RETURN_TYPES = ("IMAGE", "IMAGE", "IMAGE", "IMAGE", "MASK")
    RETURN_NAMES = ("hybrid", "keypoints", "normal", "depth", "mask")
    OUTPUT_TOOLTIPS = ("Shaded mesh + keypoints on white: the EMOSH hybrid control.",
                       "Keypoints only on black, in the chosen style.",
                       "Camera-space normals (RGB = XYZ).",
                       "Depth, near = bright.",
                       "The person's silhouette (1 = person).")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "body_model": (EHM_MODEL, {"tooltip": "The body model the track was made with."}),
            "track": (EHM_TRACK, {"tooltip": "The track to render (usually Spatial Align's output)."}),
            "width": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16,
                              "tooltip": "Output width; 0 = the track's image width. Other sizes cover + "
                                         "centre-crop, like ComfyUI's center-crop resize."}),
            "height": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16,
                               "tooltip": "Output height; 0 = the track's image height."}),
            "keypoint_style": (list(lib("render.draw").KEYPOINT_STYLES), {
                "default": "wan_animate",
                "tooltip": "Drawing of the keypoints output: wan_animate (Wan 2.2 Animate pose_video), dwpose "
                           "(Animate Anyone, with face dots), unianimate (red/blue swapped as UniAnimate reads it)."}),
            "batch_size": ("INT", {"default": 8, "min": 1, "max": 256,
                                   "tooltip": "Frames rendered at once (memory vs speed)."}),
        }}

    def render(self, body_model, track, width: int, height: int, keypoint_style: str, batch_size: int):
        modes = ("hybrid", "keypoints", "normal", "depth", "mask")
        renderer = lib("render.renderer")
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
        return (out["hybrid"], out["keypoints"], out["normal"], out["depth"], out["mask"])


NODE_CLASS_MAPPINGS = {
    "EmoshShapeSwapRetarget": ShapeSwapRetarget,
    "EmoshSpatialAlign": SpatialAlign,
    "EmoshMeshConditionRenderer": MeshConditionRenderer,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EmoshShapeSwapRetarget": "Shape Swap / Retarget",
    "EmoshSpatialAlign": "Spatial Align",
    "EmoshMeshConditionRenderer": "Mesh Condition Renderer",
}
