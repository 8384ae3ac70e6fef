"""Tracking-stage nodes: EHM Tracker, Track Save / Load, Track Edit, Track Mix, Face Crops, Export.

Thin adapters: validate, convert ComfyUI tensors, call ``emosh`` (tracker, edit, facecrop, export). Tracks travel
between nodes on the CPU (a few hundred numbers per frame) and are never modified in place.
"""
from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from ..emosh import edit, export
from ..emosh.body.camera import parse_camera_keys
from ..emosh.body.track import EHMTrack
from ..emosh.errors import InputError
from ..emosh.facecrop import face_crops
from ..emosh.track.overlay import overlay_frames
from ..emosh.track.tracker import track_frames
from .common import (ROOT_CATEGORY, EhmModel, EhmTrack, Progress, autograd, check_image, image_to_uint8,
                     list_input_files, mask_to_float, output_stem, relative_to_output, safe_path, uint8_to_image)

CATEGORY = f"{ROOT_CATEGORY}/track"
TRACK_SUFFIX = ".safetensors"
TRACK_MODES = ("video", "reference image")
EXPORT_FORMATS = ("bvh", "glb", "bvh+glb", "ply sequence")
SHAPE_SLIDERS = ("gender", "age", "muscle", "weight", "height", "proportions")  # Anny phenotypes


def _track_input(name: str, tooltip: str, optional: bool = False) -> io.Input:
    return EhmTrack.Input(name, tooltip=tooltip, optional=optional)


def _model_input() -> io.Input:
    return EhmModel.Input("body_model", tooltip="The body model from EHM Body Model Loader (the one the track was "
                                                "made with).")


def _track_output(tooltip: str) -> io.Output:
    return EhmTrack.Output(display_name="track", tooltip=tooltip)


class EHMTracker(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmoshTracker",
            display_name="EHM Tracker",
            category=CATEGORY,
            description=("Fits the Expressive Human Model to a person in an image or a video (IMAGE batch): body and "
                         "finger pose, 52 facial actions, body shape and a camera per frame, from MediaPipe landmarks "
                         "weighted by their confidence, with temporal smoothing. Frames without a detection are "
                         "interpolated and flagged. Also returns the video with the fitted mesh and landmarks drawn "
                         "over it."),
            inputs=[
                _model_input(),
                io.Image.Input("images", tooltip="One photo (reference) or the frames of a video (Load Video → Get "
                                                 "Video Components)."),
                io.Combo.Input("mode", options=list(TRACK_MODES), default="video",
                               tooltip="video: every frame, shape shared over the clip. reference image: only the "
                                       "first image, fitted longer and more precisely (use for the reference "
                                       "photo)."),
                io.Float.Input("fps", default=25.0, min=1.0, max=240.0, step=0.01,
                               tooltip="Frame rate of the video (Get Video Components gives it); stored in the track "
                                       "for time-based edits and mixing."),
                io.Float.Input("smoothing", default=1.0, min=0.0, max=10.0, step=0.1,
                               tooltip="Strength of the temporal smoothness terms (0 = per-frame fits, higher = "
                                       "steadier but slower to follow fast motion)."),
                io.Int.Input("iterations", default=0, min=0, max=2000,
                             tooltip="Optimiser steps per window of frames; 0 = the tracker's default (more for the "
                                     "reference image)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: only the masked person is tracked (everything outside the mask is "
                                      "greyed out first). One mask for all frames or one per frame."),
            ],
            outputs=[
                _track_output("The tracked person (shape, per-frame motion, camera, confidences)."),
                io.Image.Output(display_name="overlay",
                                tooltip="Preview: the input frames with the fitted body drawn over them."),
            ],
        )

    @classmethod
    def execute(cls, body_model, images: torch.Tensor, mode: str, fps: float, smoothing: float, iterations: int,
                mask: torch.Tensor | None = None) -> io.NodeOutput:
        check_image(images, "images")
        frames = image_to_uint8(images)
        if mask is not None:
            keep = mask_to_float(mask, frames.shape[0], frames.shape[1], frames.shape[2]).numpy()[..., None] >= 0.5
            frames = np.where(keep, frames, np.uint8(128))  # grey outside the mask: the detector sees one person
        reference = mode == "reference image"
        count = 1 if reference else frames.shape[0]
        bar = Progress(count)
        with autograd():  # ComfyUI runs nodes in inference mode; the fit is an optimisation
            track = track_frames(
                iter(frames[:count]), body_model, reference=reference, fps=fps, smoothing=smoothing,
                iterations=iterations or None, progress=lambda done, *_: bar.progress(done, count),
                cancel=bar.cancel, meta={"source": "ComfyUI IMAGE", "mode": mode})
        overlay = []
        for frame in overlay_frames(iter(frames[:count]), track, body_model):
            bar.cancel()
            overlay.append(frame)
        return io.NodeOutput(track.to("cpu"), uint8_to_image(overlay))


class EHMTrackSave(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmoshTrackSave",
            display_name="EHM Track Save",
            category=CATEGORY,
            description=("Saves a track as .safetensors in ComfyUI's output folder (bit-exact; reload it with EHM "
                         "Track Load after copying it to the input folder, or share it)."),
            is_output_node=True,
            inputs=[
                _track_input("track", "The track to save."),
                io.String.Input("filename_prefix", default="emosh/track",
                                tooltip="File name inside the output folder; a counter and .safetensors are "
                                        "appended. Subfolders allowed."),
            ],
        )

    @classmethod
    def execute(cls, track, filename_prefix: str) -> io.NodeOutput:
        path = output_stem(filename_prefix).with_suffix(TRACK_SUFFIX)
        track.save(path)
        record = relative_to_output(path)
        return io.NodeOutput(ui={"text": [f"{record['subfolder']}/{record['filename']}".lstrip("/")]})


class EHMTrackLoad(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmoshTrackLoad",
            display_name="EHM Track Load",
            category=CATEGORY,
            description="Loads a track (.safetensors written by EHM Track Save) from ComfyUI's input folder.",
            inputs=[io.Combo.Input("track_file", options=list_input_files((TRACK_SUFFIX,)) or [""],
                                   tooltip="A .safetensors track in ComfyUI's input folder (subfolders allowed).")],
            outputs=[_track_output("The loaded track.")],
        )

    @classmethod
    def fingerprint_inputs(cls, track_file: str) -> str:
        """The file's path and modification time: the node reruns when the file on disk changes."""
        path = safe_path(track_file, "input")
        return f"{path}:{path.stat().st_mtime_ns}" if path.is_file() else track_file

    @classmethod
    def execute(cls, track_file: str) -> io.NodeOutput:
        path = safe_path(track_file, "input")
        if path.suffix.lower() != TRACK_SUFFIX:
            raise InputError(f"{track_file} is not a .safetensors track file")
        return io.NodeOutput(EHMTrack.load(path))


class EHMTrackEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        sliders = [io.Float.Input(name, default=0.0, min=-1.0, max=1.0, step=0.01,
                                  display_mode=io.NumberDisplay.slider,
                                  tooltip=f"Change of the body's {name} (Anny phenotype, 0..1 scale; 0 = unchanged).")
                   for name in SHAPE_SLIDERS]
        return io.Schema(
            node_id="EmoshTrackEdit",
            display_name="EHM Track Edit",
            category=CATEGORY,
            description=("Edits a track: keep a frame range, scale the facial expression and finger motion, move a "
                         "virtual camera (zoom/pan keyframes) and change the body shape with sliders (taller, "
                         "heavier, older...) while the identity's motion stays the same."),
            inputs=[
                _model_input(),
                _track_input("track", "The track to edit."),
                io.Float.Input("expression_strength", default=1.0, min=0.0, max=3.0, step=0.05,
                               tooltip="0 = neutral face, 1 = as tracked, >1 = exaggerated."),
                io.Float.Input("hand_strength", default=1.0, min=0.0, max=3.0, step=0.05,
                               tooltip="Finger and wrist motion: 0 = relaxed rest hands, 1 = as tracked."),
                io.Int.Input("start_frame", default=0, min=0, max=1000000, tooltip="First frame kept."),
                io.Int.Input("end_frame", default=-1, min=-1, max=1000000,
                             tooltip="Frame after the last kept one; -1 = to the end."),
                io.String.Input("camera_keys", default="", multiline=True,
                                tooltip="Camera keyframes, one per line: 'frame zoom pan_x pan_y' (frames after the "
                                        "range cut; pan in fractions of the image size). Linear in between. Empty = "
                                        "unchanged camera."),
                *sliders,
            ],
            outputs=[_track_output("The edited track.")],
        )

    @classmethod
    def execute(cls, body_model, track, expression_strength: float, hand_strength: float, start_frame: int,
                end_frame: int, camera_keys: str, **sliders: float) -> io.NodeOutput:
        keys = parse_camera_keys(camera_keys)
        return io.NodeOutput(edit.edit_track(track, body_model, expression_strength=expression_strength,
                                             hand_strength=hand_strength, start=start_frame,
                                             stop=None if end_frame < 0 else end_frame, camera_keys=keys,
                                             shape_offsets=sliders))


class EHMTrackMix(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        def part(name: str, what: str) -> io.Boolean.Input:
            return io.Boolean.Input(name, default=True, tooltip=f"Take the {what} from the face track.")

        return io.Schema(
            node_id="EmoshTrackMix",
            display_name="EHM Track Mix",
            category=CATEGORY,
            description=("Combines performances: body motion, camera and shape from one track, fingers from a "
                         "second, face (expression, jaw, eye gaze, head turn) from a third, each with its own time "
                         "offset; tracks at other frame rates are resampled. E.g. a talking-head performance on a "
                         "dance."),
            inputs=[
                _model_input(),
                _track_input("body_track", "Body motion, camera and body shape come from this track."),
                io.Float.Input("hands_offset", default=0.0, min=-3600.0, max=3600.0, step=0.01,
                               tooltip="Seconds into the hands track at the first output frame."),
                io.Float.Input("face_offset", default=0.0, min=-3600.0, max=3600.0, step=0.01,
                               tooltip="Seconds into the face track at the first output frame."),
                part("face_expression", "facial expression (brows, cheeks, mouth, blinks)"),
                part("face_jaw", "jaw (mouth opening, speech)"),
                part("face_eyes", "eye gaze"),
                part("face_head", "head and neck rotation"),
                io.Float.Input("output_fps", default=0.0, min=0.0, max=240.0, step=0.01,
                               tooltip="Resample the result to this frame rate; 0 = the body track's."),
                _track_input("hands_track", "Optional: fingers and wrists come from this track.", optional=True),
                _track_input("face_track", "Optional: the chosen face parts come from this track.", optional=True),
            ],
            outputs=[_track_output("The mixed track (body track's length; its fps unless output_fps is set).")],
        )

    @classmethod
    def execute(cls, body_model, body_track, hands_offset: float, face_offset: float, face_expression: bool,
                face_jaw: bool, face_eyes: bool, face_head: bool, output_fps: float, hands_track=None,
                face_track=None) -> io.NodeOutput:
        chosen = {"expression": face_expression, "jaw": face_jaw, "eyes": face_eyes, "head": face_head}
        parts = [p for p, on in chosen.items() if on]
        return io.NodeOutput(edit.mix_tracks(body_model, body_track, hands_track, face_track,
                                             hands_offset=hands_offset, face_offset=face_offset, face_parts=parts,
                                             fps=output_fps or None))


class EHMFaceCrops(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmoshFaceCrops",
            display_name="EHM Face Crops",
            category=CATEGORY,
            description=("The driver's face per frame, cropped around the tracked face with a temporally smoothed "
                         "box and resized to 512×512 the way Wan-Animate's pre-processing does: connect it to "
                         "WanAnimateToVideo's face_video."),
            inputs=[
                _model_input(),
                _track_input("track", "The driving video's track (not retargeted: the crops come from its frames)."),
                io.Image.Input("images", tooltip="The driving video frames the track was made from."),
                io.Int.Input("size", default=512, min=64, max=2048, step=8,
                             tooltip="Crop size in pixels (Wan-Animate expects 512)."),
                io.Float.Input("scale", default=1.3, min=1.0, max=4.0, step=0.05,
                               tooltip="Box area relative to the face points' box (Wan-Animate uses 1.3)."),
                io.Float.Input("smoothing", default=2.0, min=0.0, max=30.0, step=0.5,
                               tooltip="Temporal smoothing of the box (Gaussian sigma in frames; 0 = none)."),
            ],
            outputs=[io.Image.Output(display_name="face_video",
                                     tooltip="Face crops, one per frame [frames, size, size, 3].")],
        )

    @classmethod
    def execute(cls, body_model, track, images: torch.Tensor, size: int, scale: float,
                smoothing: float) -> io.NodeOutput:
        check_image(images, "images")
        crops, _ = face_crops(image_to_uint8(images), track, body_model, size=size, scale=scale,
                              smoothing=smoothing)
        return io.NodeOutput(uint8_to_image(crops))


class EHMExport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmoshExport",
            display_name="EHM Export",
            category=CATEGORY,
            description=("Exports a track for 3D tools: BVH skeleton animation with the body model's bone "
                         "hierarchy, and/or the animated mesh as .glb (morph-target animation) or a .ply per frame. "
                         "Files go to ComfyUI's output folder; Y up, facing +Z."),
            is_output_node=True,
            inputs=[
                _model_input(),
                _track_input("track", "The track to export (e.g. the retargeted one)."),
                io.Combo.Input("format", options=list(EXPORT_FORMATS), default="bvh+glb",
                               tooltip="bvh: skeleton motion (Blender, Maya, MotionBuilder). glb: animated mesh. ply "
                                       "sequence: one mesh file per frame."),
                io.Combo.Input("bvh_units", options=["centimetres", "metres"], default="centimetres",
                               tooltip="Length unit of the BVH (mocap files are usually in centimetres)."),
                io.String.Input("filename_prefix", default="emosh/export",
                                tooltip="Name inside the output folder; a counter is appended."),
            ],
        )

    @classmethod
    def execute(cls, body_model, track, format: str, bvh_units: str, filename_prefix: str) -> io.NodeOutput:
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
        return io.NodeOutput(ui={"text": [f"{n['subfolder']}/{n['filename']}".lstrip("/") for n in names]})


NODES = [EHMTracker, EHMTrackSave, EHMTrackLoad, EHMTrackEdit, EHMTrackMix, EHMFaceCrops, EHMExport]
