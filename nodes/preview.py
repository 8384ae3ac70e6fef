"""EMOSH Preview Animate: the training-free animator (no weights) as a node."""
from __future__ import annotations

import torch

from .common import (EHM_MODEL, EHM_TRACK, ROOT_CATEGORY, Progress, as_image, check_image, image_to_uint8,
                     lib, mask_from_float, mask_to_float)


class EmoshPreviewAnimate:
    DESCRIPTION = ("Training-free preview: paints the reference photo onto the reference-fitted body mesh and "
                   "re-renders it in the retargeted motion over the reference background with the person removed. "
                   "Needs no model files and runs on a CPU; also a good init video for the EMOSH Sampler.")
    CATEGORY = f"{ROOT_CATEGORY}/animate"
    FUNCTION = "animate"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("images", "person_mask")
    OUTPUT_TOOLTIPS = ("The animated video frames at the track's size.", "Where the animated person is (soft edge).")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "body_model": (EHM_MODEL, {"tooltip": "The body model the tracks were made with."}),
            "reference_image": ("IMAGE", {"tooltip": "The original reference photo (texture source; first image)."}),
            "reference_track": (EHM_TRACK, {"tooltip": "The reference photo's track (EHM Tracker, reference mode)."}),
            "track": (EHM_TRACK, {"tooltip": "The motion to animate, in output coordinates (Spatial Align's track)."}),
            "background": ("IMAGE", {"tooltip": "The output-size reference (Spatial Align's reference output); the "
                                                "person is inpainted away and the animation composited over it."}),
            "background_mask": ("MASK", {"tooltip": "The reference person in the background image (Spatial Align's "
                                                    "reference_mask)."}),
            "texture_size": ("INT", {"default": 1024, "min": 256, "max": 4096, "step": 256,
                                     "tooltip": "Side of the UV texture painted from the photo."}),
            "batch_size": ("INT", {"default": 8, "min": 1, "max": 256,
                                   "tooltip": "Frames rendered at once (memory vs speed)."}),
        }}

    def animate(self, body_model, reference_image: torch.Tensor, reference_track, track, background: torch.Tensor,
                background_mask: torch.Tensor, texture_size: int, batch_size: int):
        check_image(reference_image, "reference_image")
        check_image(background, "background")
        preview = lib("generate.preview")
        plate = image_to_uint8(background[:1])[0]
        height, width = plate.shape[:2]
        person = mask_to_float(background_mask[:1], 1, height, width)[0].numpy() >= 0.5
        animator = preview.PreviewAnimator(body_model, image_to_uint8(reference_image[:1])[0], reference_track,
                                           preview.background_plate(plate, person), texture_size=texture_size)
        bar = Progress(track.num_frames)
        frames, alphas = [], []
        for start in range(0, track.num_frames, batch_size):
            bar.cancel()
            images, alpha = animator.render(track.frames(start, start + batch_size))
            frames.append(as_image(images))
            alphas.append(mask_from_float(alpha))
            bar.progress(min(start + batch_size, track.num_frames))
        return (torch.cat(frames), mask_from_float(torch.cat(alphas)))


NODE_CLASS_MAPPINGS = {"EmoshPreviewAnimate": EmoshPreviewAnimate}
NODE_DISPLAY_NAME_MAPPINGS = {"EmoshPreviewAnimate": "EMOSH Preview Animate"}
