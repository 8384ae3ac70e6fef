"""Tracking-stage nodes: EHM Tracker, Track Save / Load, Track Edit, Track Mix, Face Crops, Export.

Thin adapters: validate, convert ComfyUI tensors, call ``emosh`` (tracker, edit, facecrop, export). Tracks travel
between nodes on the CPU (a few hundred numbers per frame) and are never modified in place.
"""
from __future__ import annotations

import numpy as np
import torch

from .common import (EHM_MODEL, EHM_TRACK, ROOT_CATEGORY, Progress, autograd, check_image, image_to_uint8, lib,
                     list_input_files, mask_to_float, output_stem, relative_to_output, safe_path, uint8_to_image)

CATEGORY = f"{ROOT_CATEGORY}/track"
TRACK_SUFFIX = ".safetensors"
TRACK_MODES = ("video", "reference image")
EXPORT_FORMATS = ("bvh", "glb", "bvh+glb", "ply sequence")
SHAPE_SLIDERS = ("gender", "age", "muscle", "weight", "height", "proportions")  # Anny phenotypes


def _track_input(tooltip: str) -> tuple:
    return (EHM_TRACK, {"tooltip": tooltip})


def _model_input() -> tuple:
    return (EHM_MODEL, {"tooltip": "The body model from EHM Body Model Loader (the one the track was made with)."})


class EHMTracker:
    DESCRIPTION = ("Fits the Expressive Human Model to a person in an image or a video (IMAGE batch): body and finger "
                   "pose, 52 facial actions, body shape and a camera per frame, from MediaPipe landmarks weighted by "
                   "their confidence, with temporal smoothing. Frames without a detection are interpolated and "
                   "flagged. Also returns the video with the fitted mesh and landmarks drawn over it.")
    CATEGORY = CATEGORY
    FUNCTION = "track"
    RETURN_TYPES = (EHM_TRACK, "IMAGE")
    RETURN_NAMES = ("track", "overlay")
    OUTPUT_TOOLTIPS = ("The tracked person (shape, per-frame motion, camera, confidences).",
                       "Preview: the input frames with the fitted body drawn over them.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "body_model": _model_input(),
                "images": ("IMAGE", {"tooltip": "One photo (reference) or the frames of a video (Load Video → "
                                                "Get Video Components)."}),
                "mode": (list(TRACK_MODES), {
                    "default": "video",
                    "tooltip": "video: every frame, shape shared over the clip. reference image: only the first "
                               "image, fitted longer and more precisely (use for the reference photo)."}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.01,
                                  "tooltip": "Frame rate of the video (Get Video Components gives it); stored in the "
                                             "track for time-based edits and mixing."}),
                "smoothing": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.1,
                                        "tooltip": "Strength of the temporal smoothness terms (0 = per-frame fits, "
                                                   "higher = steadier but slower to follow fast motion)."}),
                "iterations": ("INT", {"default": 0, "min": 0, "max": 2000,
                                       "tooltip": "Optimiser steps per window of frames; 0 = the tracker's default "
                                                  "(more for the reference image)."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Optional: only the masked person is tracked (everything outside the mask "
                                             "is greyed out first). One mask for all frames or one per frame."}),
            },
        }

    def track(self, body_model, images: torch.Tensor, mode: str, fps: float, smoothing: float, iterations: int,
              mask: torch.Tensor | None = None):
        check_image(images, "images")
        frames = image_to_uint8(images)
        if mask is not None:
            keep = mask_to_float(mask, frames.shape[0], frames.shape[1], frames.shape[2]).numpy()[..., None] >= 0.5
            frames = np.where(keep, frames, np.uint8(128))  # grey outside the mask: the detector sees one person
        reference = mode == "reference image"
        count = 1 if reference else frames.shape[0]
        bar = Progress(count)
        with autograd():  # ComfyUI runs nodes in inference mode; the fit is an optimisation
            track = lib("track.tracker").track_frames(
                iter(frames[:count]), body_model, reference=reference, fps=fps, smoothing=smoothing,
                iterations=iterations or None, progress=lambda done, *_: bar.progress(done, count),
                cancel=bar.cancel, meta={"source": "ComfyUI IMAGE", "mode": mode})
        overlay = []
        for frame in lib("track.overlay").overlay_frames(iter(frames[:count]), track, body_model):
            bar.cancel()
            overlay.append(frame)
        return (track.to("cpu"), uint8_to_image(overlay))


class EHMTrackSave:
    DESCRIPTION = ("Saves a track as .safetensors in ComfyUI's output folder (bit-exact; reload it with EHM Track Load "
                   "after copying it to the input folder, or share it).")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "track": _track_input("The track to save."),
            "filename_prefix": ("STRING", {"default": "emosh/track",
                                           "tooltip": "File name inside the output folder; a counter and "
                                                      ".safetensors are appended. Subfolders allowed."}),
        }}

    def save(self, track, filename_prefix: str):
        path = output_stem(filename_prefix).with_suffix(TRACK_SUFFIX)
        track.save(path)
        record = relative_to_output(path)
        return {"ui": {"text": [f"{record['subfolder']}/{record['filename']}".lstrip("/")]}, "result": ()}


class EHMTrackLoad:
    DESCRIPTION = "Loads a track (.safetensors written by EHM Track Save) from ComfyUI's input folder."
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (EHM_TRACK,)
    RETURN_NAMES = ("track",)
    OUTPUT_TOOLTIPS = ("The loaded track.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "track_file": (list_input_files((TRACK_SUFFIX,)) or [""], {
                "tooltip": "A .safetensors track in ComfyUI's input folder (subfolders allowed)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, track_file: str):
        path = safe_path(track_file, "input")
        return f"{path}:{path.stat().st_mtime_ns}" if path.is_file() else track_file

    def load(self, track_file: str):
        path = safe_path(track_file, "input")
        if path.suffix.lower() != TRACK_SUFFIX:
            raise lib("errors").InputError(f"{track_file} is not a .safetensors track file")
        return (lib("body.track").EHMTrack.load(path),)


class EHMTrackEdit:
    DESCRIPTION = ("Edits a track: keep a frame range, scale the facial expression and finger motion, move a virtual "
                   "camera (zoom/pan keyframes) and change the body shape with sliders (taller, heavier, older...) "
                   "while the identity's motion stays the same.")
    CATEGORY = CATEGORY
    FUNCTION = "edit"
    RETURN_TYPES = (EHM_TRACK,)
    RETURN_NAMES = ("track",)
    OUTPUT_TOOLTIPS = ("The edited track.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        sliders = {name: ("FLOAT", {"default": 0.0, "min": -1.0, "max": 1.0, "step": 0.01, "display": "slider",
                                    "tooltip": f"Change of the body's {name} (Anny phenotype, 0..1 scale; "
                                               f"0 = unchanged)."})
                   for name in SHAPE_SLIDERS}
        return {"required": {
            "body_model": _model_input(),
            "track": _track_input("The track to edit."),
            "expression_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05,
                                              "tooltip": "0 = neutral face, 1 = as tracked, >1 = exaggerated."}),
            "hand_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05,
                                        "tooltip": "Finger and wrist motion: 0 = relaxed rest hands, 1 = as tracked."}),
            "start_frame": ("INT", {"default": 0, "min": 0, "max": 1000000,
                                    "tooltip": "First frame kept."}),
            "end_frame": ("INT", {"default": -1, "min": -1, "max": 1000000,
                                  "tooltip": "Frame after the last kept one; -1 = to the end."}),
            "camera_keys": ("STRING", {"default": "", "multiline": True,
                                       "tooltip": "Camera keyframes, one per line: 'frame zoom pan_x pan_y' (frames "
                                                  "after the range cut; pan in fractions of the image size). "
                                                  "Linear in between. Empty = unchanged camera."}),
            **sliders,
        }}

    def edit(self, body_model, track, expression_strength: float, hand_strength: float, start_frame: int,
             end_frame: int, camera_keys: str, **sliders: float):
        edit = lib("edit")
        keys = edit.parse_camera_keys(camera_keys)
        return (edit.edit_track(track, body_model, expression_strength=expression_strength,
                                hand_strength=hand_strength, start=start_frame,
                                stop=None if end_frame < 0 else end_frame, camera_keys=keys,
                                shape_offsets=sliders),)


class EHMTrackMix:
    DESCRIPTION = ("Combines performances: body motion, camera and shape from one track, fingers from a second, face "
                   "(expression, jaw, eye gaze, head turn) from a third, each with its own time offset; tracks at "
                   "other frame rates are resampled. E.g. a talking-head performance on a dance.")
    CATEGORY = CATEGORY
    FUNCTION = "mix"
    RETURN_TYPES = (EHM_TRACK,)
    RETURN_NAMES = ("track",)
    OUTPUT_TOOLTIPS = ("The mixed track (body track's length; its fps unless output_fps is set).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        def part(what: str) -> tuple:
            return ("BOOLEAN", {"default": True, "tooltip": f"Take the {what} from the face track."})

        return {
            "required": {
                "body_model": _model_input(),
                "body_track": _track_input("Body motion, camera and body shape come from this track."),
                "hands_offset": ("FLOAT", {"default": 0.0, "min": -3600.0, "max": 3600.0, "step": 0.01,
                                           "tooltip": "Seconds into the hands track at the first output frame."}),
                "face_offset": ("FLOAT", {"default": 0.0, "min": -3600.0, "max": 3600.0, "step": 0.01,
                                          "tooltip": "Seconds into the face track at the first output frame."}),
                "face_expression": part("facial expression (brows, cheeks, mouth, blinks)"),
                "face_jaw": part("jaw (mouth opening, speech)"),
                "face_eyes": part("eye gaze"),
                "face_head": part("head and neck rotation"),
                "output_fps": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 240.0, "step": 0.01,
                                         "tooltip": "Resample the result to this frame rate; 0 = the body track's."}),
            },
            "optional": {
                "hands_track": _track_input("Optional: fingers and wrists come from this track."),
                "face_track": _track_input("Optional: the chosen face parts come from this track."),
            },
        }

    def mix(self, body_model, body_track, hands_offset: float, face_offset: float, face_expression: bool,
            face_jaw: bool, face_eyes: bool, face_head: bool, output_fps: float, hands_track=None, face_track=None):
        chosen = {"expression": face_expression, "jaw": face_jaw, "eyes": face_eyes, "head": face_head}
        parts = [p for p, on in chosen.items() if on]
        return (lib("edit").mix_tracks(body_model, body_track, hands_track, face_track, hands_offset=hands_offset,
                                       face_offset=face_offset, face_parts=parts, fps=output_fps or None),)


class EHMFaceCrops:
    DESCRIPTION = ("The driver's face per frame, cropped around the tracked face with a temporally smoothed box and "
                   "resized to 512×512 the way Wan-Animate's pre-processing does: connect it to WanAnimateToVideo's "
                   "face_video.")
    CATEGORY = CATEGORY
    FUNCTION = "crop"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("face_video",)
    OUTPUT_TOOLTIPS = ("Face crops, one per frame [frames, size, size, 3].",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "body_model": _model_input(),
            "track": _track_input("The driving video's track (not retargeted: the crops come from its frames)."),
            "images": ("IMAGE", {"tooltip": "The driving video frames the track was made from."}),
            "size": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8,
                             "tooltip": "Crop size in pixels (Wan-Animate expects 512)."}),
            "scale": ("FLOAT", {"default": 1.3, "min": 1.0, "max": 4.0, "step": 0.05,
                                "tooltip": "Box area relative to the face points' box (Wan-Animate uses 1.3)."}),
            "smoothing": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 30.0, "step": 0.5,
                                    "tooltip": "Temporal smoothing of the box (Gaussian sigma in frames; 0 = none)."}),
        }}

    def crop(self, body_model, track, images: torch.Tensor, size: int, scale: float, smoothing: float):
        check_image(images, "images")
        crops, _ = lib("facecrop").face_crops(image_to_uint8(images), track, body_model, size=size, scale=scale,
                                              smoothing=smoothing)
        return (uint8_to_image(crops),)


class EHMExport:
    DESCRIPTION = ("Exports a track for 3D tools: BVH skeleton animation with the body model's bone hierarchy, and/or "
                   "the animated mesh as .glb (morph-target animation) or a .ply per frame. Files go to ComfyUI's "
                   "output folder; Y up, facing +Z.")
    CATEGORY = CATEGORY
    FUNCTION = "export"
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "body_model": _model_input(),
            "track": _track_input("The track to export (e.g. the retargeted one)."),
            "format": (list(EXPORT_FORMATS), {"default": "bvh+glb",
                                              "tooltip": "bvh: skeleton motion (Blender, Maya, MotionBuilder). glb: "
                                                         "animated mesh. ply sequence: one mesh file per frame."}),
            "bvh_units": (["centimetres", "metres"], {"default": "centimetres",
                                                      "tooltip": "Length unit of the BVH (mocap files are usually "
                                                                 "in centimetres)."}),
            "filename_prefix": ("STRING", {"default": "emosh/export",
                                           "tooltip": "Name inside the output folder; a counter is appended."}),
        }}

    def export(self, body_model, track, format: str, bvh_units: str, filename_prefix: str):
        export = lib("export")
        suffixes = {"bvh": (".bvh",), "glb": (".glb",), "bvh+glb": (".bvh", ".glb"), "ply sequence": ()}[format]
        stem = output_stem(filename_prefix)
        written = []
        if ".bvh" in suffixes:
            written.append(export.write_bvh(stem.with_suffix(".bvh"), body_model, track,
                                            unit_scale=100.0 if bvh_units == "centimetres" else 1.0))
        if ".glb" in suffixes:
            written.append(export.write_glb(stem.with_suffix(".glb"), body_model, track))
        if format == "ply sequence":
            written.append(export.write_ply_sequence(stem, body_model, track)[0].parent)
        names = [relative_to_output(p) for p in written]
        return {"ui": {"text": [f"{n['subfolder']}/{n['filename']}".lstrip("/") for n in names]}, "result": ()}


NODE_CLASS_MAPPINGS = {
    "EmoshTracker": EHMTracker,
    "EmoshTrackSave": EHMTrackSave,
    "EmoshTrackLoad": EHMTrackLoad,
    "EmoshTrackEdit": EHMTrackEdit,
    "EmoshTrackMix": EHMTrackMix,
    "EmoshFaceCrops": EHMFaceCrops,
    "EmoshExport": EHMExport,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EmoshTracker": "EHM Tracker",
    "EmoshTrackSave": "EHM Track Save",
    "EmoshTrackLoad": "EHM Track Load",
    "EmoshTrackEdit": "EHM Track Edit",
    "EmoshTrackMix": "EHM Track Mix",
    "EmoshFaceCrops": "EHM Face Crops",
    "EmoshExport": "EHM Export",
}
