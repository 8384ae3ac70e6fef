"""EMOSH Preview Animate: the training-free animator (no weights) as a node."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..emosh.generate import preview
from .common import (ROOT_CATEGORY, EhmModel, EhmTrack, Progress, as_image, check_image, image_to_uint8,
                     mask_from_float, mask_to_float)


class EmoshPreviewAnimate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmoshPreviewAnimate",
            display_name="EMOSH Preview Animate",
            category=f"{ROOT_CATEGORY}/animate",
            description=("Training-free preview: paints the reference photo onto the reference-fitted body mesh and "
                         "re-renders it in the retargeted motion over the reference background with the person "
                         "removed. Needs no model files and runs on a CPU; also a good init video for the EMOSH "
                         "Sampler."),
            inputs=[
                EhmModel.Input("body_model", tooltip="The body model the tracks were made with."),
                io.Image.Input("reference_image", tooltip="The original reference photo (texture source; first "
                                                          "image)."),
                EhmTrack.Input("reference_track", tooltip="The reference photo's track (EHM Tracker, reference "
                                                          "mode)."),
                EhmTrack.Input("track", tooltip="The motion to animate, in output coordinates (Spatial Align's "
                                                "track)."),
                io.Image.Input("background", tooltip="The output-size reference (Spatial Align's reference output); "
                                                     "the person is inpainted away and the animation composited "
                                                     "over it."),
                io.Mask.Input("background_mask", tooltip="The reference person in the background image (Spatial "
                                                         "Align's reference_mask)."),
                io.Int.Input("texture_size", default=1024, min=256, max=4096, step=256,
                             tooltip="Side of the UV texture painted from the photo."),
                io.Int.Input("batch_size", default=8, min=1, max=256,
                             tooltip="Frames rendered at once (memory vs speed)."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The animated video frames at the track's size."),
                io.Mask.Output(display_name="person_mask", tooltip="Where the animated person is (soft edge)."),
            ],
        )

    @classmethod
    def execute(cls, body_model, reference_image: torch.Tensor, reference_track, track, background: torch.Tensor,
                background_mask: torch.Tensor, texture_size: int, batch_size: int) -> io.NodeOutput:
        check_image(reference_image, "reference_image")
        check_image(background, "background")
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
        return io.NodeOutput(torch.cat(frames), mask_from_float(torch.cat(alphas)))


NODES = [EmoshPreviewAnimate]
