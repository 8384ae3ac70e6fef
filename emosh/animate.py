"""The main job: reference photo + driving video → video of the reference person performing the driving motion.

Chain (one function per stage, shared by the CLI and the ComfyUI nodes):
    track reference (1 frame) ─┐
    track driving video ───────┴─► retarget (driver's motion, reference's shape) ─► spatial align (placed where the
    reference stands, at the output size) ─► per batch: control frames (hybrid render) + output frames (preview
    animator, or a diffusion model given with ``model``).
The driving video is decoded once for tracking; everything after works batch by batch, so memory does not grow with
the video length (only the tracks, a few hundred numbers per frame, are held whole).
Progress is reported as ``progress(stage, done, total)``; ``cancel()`` is polled between batches and stops the run
(raising :class:`Cancelled`) when it returns True; ComfyUI's interrupt check may also raise by itself. Output files
are written under temporary names, so a cancelled run leaves nothing behind.
"""
from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch

from .body import EHMTrack, load_body_model
from .body.model import BodyModel
from .errors import EmoshError, InputError, MissingModelError
from .video import VideoWriter, is_image, iter_frames, probe_video, read_image, write_image

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]

DEFAULT_LONG_SIDE = 512
SIZE_MULTIPLE = 16  # video codecs and video diffusion models both want sizes divisible by 16


class Cancelled(EmoshError):
    """The caller's ``cancel()`` asked to stop."""


@dataclass
class AnimateOptions:
    """What a user may set; ``None`` means "follow the inputs" (reference aspect, driving fps)."""

    width: int | None = None
    height: int | None = None
    long_side: int = DEFAULT_LONG_SIDE
    fps: float | None = None
    start: int = 0
    max_frames: int | None = None
    batch_size: int = 8
    texture_size: int = 1024
    device: str = "cpu"
    relative_orientation: bool = False  # True: start from the reference's body orientation, add the driver's turns
    model: str | None = None  # diffusion model (folder or .safetensors); None = training-free preview animator
    adapter: str | None = None
    text_embeds: str | None = None
    negative_text_embeds: str | None = None  # None: the text file's negative_prompt_embeds, else zeros (see load_text)
    guidance_scale: float = 5.0  # classifier-free guidance; 1 = one unguided prediction per step
    chunk_frames: int = 81  # pixel frames the diffusion model denoises at once (memory vs. fewer seams)
    overlap_frames: int = 8  # pixel frames shared (cross-faded) by consecutive chunks
    steps: int = 20
    denoise: float = 1.0
    seed: int = 0


@dataclass
class AnimationBatch:
    """Frames ``start .. start + n``: control and output video float [n, H, W, 3] in 0..1, and where the animated
    person is drawn (float [n, H, W], the preview's soft alpha)."""

    start: int
    control: torch.Tensor
    output: torch.Tensor
    mask: torch.Tensor


@dataclass
class AnimateResult:
    output: Path
    frames: int
    size: tuple[int, int]  # (height, width)
    fps: float
    seconds: dict[str, float] = field(default_factory=dict)
    control: Path | None = None
    tracks: Path | None = None
    montage: Path | None = None

    def summary(self) -> dict:
        return {"output": str(self.output), "frames": self.frames, "height": self.size[0], "width": self.size[1],
                "fps": self.fps, "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "seconds_total": round(sum(self.seconds.values()), 3),
                "control": str(self.control) if self.control else None,
                "tracks": str(self.tracks) if self.tracks else None,
                "montage": str(self.montage) if self.montage else None}


def output_size(reference_hw: tuple[int, int], width: int | None, height: int | None,
                long_side: int = DEFAULT_LONG_SIDE) -> tuple[int, int]:
    """(height, width) of the output: given sizes win, a missing side follows the reference's aspect ratio."""
    ref_h, ref_w = reference_hw
    if width and height:
        h, w = height, width
    elif width:
        h, w = width * ref_h / ref_w, width
    elif height:
        h, w = height, height * ref_w / ref_h
    else:
        scale = long_side / max(ref_h, ref_w)
        h, w = ref_h * scale, ref_w * scale
    h, w = (max(SIZE_MULTIPLE, int(v / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE) for v in (h, w))
    return h, w


def _check_inputs(reference: str | os.PathLike, driving: str | os.PathLike) -> None:
    if not Path(reference).is_file():
        raise InputError(f"Reference image not found: {reference}")
    if not is_image(reference):
        raise InputError(f"Reference must be an image (.png/.jpg/...), got {reference}")
    if not Path(driving).is_file():
        raise InputError(f"Driving video not found: {driving}")
    if is_image(driving):
        raise InputError(f"Driving input must be a video, got the image {driving}")
    probe_video(driving)  # clear error for files that are not videos


class _Stages:
    """Per-stage wall time, progress forwarding and cancel polling."""

    def __init__(self, progress: ProgressFn | None, cancel: CancelFn | None):
        self.seconds: dict[str, float] = {}
        self._progress = progress
        self._cancel = cancel

    def run(self, stage: str, fn: Callable, *args, **kwargs):
        begin = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - begin

    def report(self, stage: str, done: int, total: int) -> None:
        self.check_cancel()
        if self._progress is not None:
            self._progress(stage, done, total)

    def should_stop(self) -> bool:
        return bool(self._cancel is not None and self._cancel())

    def check_cancel(self) -> None:
        if self.should_stop():
            raise Cancelled("The animation was cancelled; no output was written")


# ---------------------------------------------------------------------------------------------------- stages
def track_inputs(model: BodyModel, reference_image: np.ndarray, driving: str | os.PathLike,
                 options: AnimateOptions, stages: _Stages) -> tuple[EHMTrack, EHMTrack]:
    """Reference track (one frame, in the photo's pixels) and driving track (streamed decode of the video)."""
    from .track.tracker import track_file, track_frames

    stages.report("track_reference", 0, 1)
    ref = stages.run("track_reference", track_frames, [reference_image], model, reference=True,
                     cancel=stages.should_stop)
    stages.report("track_reference", 1, 1)
    info = probe_video(driving)
    total = max(0, info.frames - options.start) if info.frames else 0
    if options.max_frames:
        total = min(total, options.max_frames) if total else options.max_frames
    drv = stages.run("track_driving", track_file, driving, model, start=options.start,
                     max_frames=options.max_frames, cancel=stages.should_stop,
                     progress=lambda done: stages.report("track_driving", done, max(total, done)))
    return ref, drv


def plan_output(model: BodyModel, reference_image: np.ndarray, reference_track: EHMTrack, driving_track: EHMTrack,
                options: AnimateOptions, stages: _Stages):
    """Retarget the driver's motion onto the reference shape and place it where the reference stands."""
    from .align import spatial_align
    from .retarget import retarget

    height, width = output_size(reference_image.shape[:2], options.width, options.height, options.long_side)
    if options.relative_orientation:
        driving_track = relative_root_orientation(driving_track, reference_track)
    moved = stages.run("retarget", retarget, model, driving_track, reference_track)
    aligned = stages.run("align", spatial_align, model, reference_image, reference_track, moved,
                         width=width, height=height)
    return aligned


def relative_root_orientation(driving: EHMTrack, reference: EHMTrack) -> EHMTrack:
    """The driver's body turns relative to its first frame, applied to the reference's orientation.

    A driver filmed from below (a dashboard camera) or side-on would otherwise tip the reference person toward or
    away from the camera; this way frame 0 has the reference's own stance, which is what lets the output start
    where the reference stands, and every later turn of the driver is kept."""
    import roma

    turns = roma.rotvec_to_rotmat(driving.global_orient)
    start = roma.rotvec_to_rotmat(reference.global_orient[:1].to(turns))
    orient = start @ turns[:1].transpose(1, 2) @ turns  # the turn in the body's own frame (about its own up axis)
    return driving.replace(global_orient=roma.rotmat_to_rotvec(orient).contiguous(),
                           meta={**driving.meta, "orientation": "relative to the reference"})


def iter_animation(model: BodyModel, reference_image: np.ndarray, reference_track: EHMTrack, aligned,
                   options: AnimateOptions, stages: _Stages) -> Iterator[AnimationBatch]:
    """Control and preview frames batch by batch for the aligned output track."""
    from .generate.preview import PreviewAnimator, background_plate
    from .render.renderer import render_track

    track = aligned.track
    height, width = track.image_size
    plate = stages.run("background", background_plate, aligned.reference_image,
                       aligned.reference_mask.cpu().numpy())
    animator = stages.run("texture", PreviewAnimator, model, reference_image, reference_track, plate,
                          texture_size=options.texture_size, device=options.device)
    total = track.num_frames
    batches = render_track(model, track, ("hybrid",), width=width, height=height, batch_size=options.batch_size,
                           device=options.device)
    done = 0
    stages.report("render", 0, total)
    while True:
        stages.check_cancel()
        batch = stages.run("control", next, batches, None)
        if batch is None:
            break
        part = track.frames(batch.start, batch.start + batch.frames["hybrid"].shape[0])
        frames, alpha = stages.run("preview", animator.render, part)
        done += part.num_frames
        stages.report("render", done, total)
        yield AnimationBatch(batch.start, as_float(batch.frames["hybrid"]), frames, alpha)


def animate_tracks(model: BodyModel, reference_image: np.ndarray, reference_track: EHMTrack,
                   driving_track: EHMTrack, options: AnimateOptions | None = None,
                   progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> Iterator[AnimationBatch]:
    """The main job from tracks already made (e.g. by the tracker node): retarget, align, then control and output
    frames batch by batch (diffusion when ``options.model`` is set, else the preview animator)."""
    options = options or AnimateOptions()
    stages = _Stages(progress, cancel)
    pipeline = load_diffusion(options) if options.model is not None else None
    return animation(model, reference_image, reference_track, driving_track, pipeline, options, stages)[1]


def animation(model: BodyModel, reference_image: np.ndarray, reference_track: EHMTrack, driving_track: EHMTrack,
              pipeline, options: AnimateOptions, stages: _Stages) -> tuple:
    """What every entry point runs once the tracks exist: the aligned output (``AlignResult``) and its frames,
    batch by batch (lazily: nothing is rendered before the first batch is asked for)."""
    aligned = plan_output(model, reference_image, reference_track, driving_track, options, stages)
    batches = iter_animation(model, reference_image, reference_track, aligned, options, stages)
    if pipeline is not None:
        batches = diffuse(pipeline, aligned.reference_image, batches, options, stages)
    return aligned, batches


def resolve_model(name: str | os.PathLike) -> Path:
    """A diffusion model given as a path, or as a name inside the emosh model folders; else an error naming every
    place looked at."""
    from .paths import emosh_model_dirs

    path = Path(name)
    candidates = [path] if path.is_absolute() else [path] + [d / path for d in emosh_model_dirs()]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise MissingModelError(
        f"Diffusion model {str(name)!r} not found; looked for {', '.join(str(c) for c in candidates)}. Put a diffusers "
        f"Wan folder or a .safetensors file there (EMOSH never downloads weights), or leave out --model to use the "
        f"training-free preview animator.")


@dataclass
class DiffusionModel:
    """A loaded diffusers EMOSH pipeline and the text embeddings ``[1, L, text_dim]`` it conditions on; without
    ``negative_prompt_embeds`` it samples unguided."""

    pipeline: object  # emosh.generate.pipeline.EmoshPipeline (imported lazily: torch-only runs never load diffusers)
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None


def load_diffusion(options: AnimateOptions) -> DiffusionModel:
    """The diffusers EMOSH pipeline for ``options.model`` (+ adapter) and its text embeddings (:func:`load_text`)."""
    from .generate.pipeline import EmoshPipeline

    model = resolve_model(options.model)
    adapter = resolve_model(options.adapter) if options.adapter else None
    pipeline = EmoshPipeline.from_pretrained(model, adapter=adapter, device=options.device)
    return DiffusionModel(pipeline, *load_text(options, pipeline.transformer.config.text_dim))


def load_text(options: AnimateOptions, text_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Positive and negative text embeddings from the user's safetensors files (EMOSH runs no text encoder).

    Positive: ``prompt_embeds`` of ``options.text_embeds``, else zeros ``[1, 8, text_dim]`` (an empty prompt, as
    the trainer's default). Negative, for classifier-free guidance: the ``options.negative_text_embeds`` file's
    ``negative_prompt_embeds`` (or its ``prompt_embeds``); else ``negative_prompt_embeds`` stored beside the
    positive ones in the ``options.text_embeds`` file (what diffusers' ``WanPipeline.encode_prompt`` returns as a
    pair); else, with a positive prompt given, zeros of its shape: guidance away from the empty prompt. With no
    text files at all the negative is None (it would equal the positive, so guiding could only double the cost).
    """
    from safetensors.torch import load_file

    def pick(path: str, tensors: dict[str, torch.Tensor], *keys: str) -> torch.Tensor:
        for key in keys:
            if key in tensors:
                return tensors[key]
        raise InputError(f"{path} has no {' or '.join(repr(k) for k in keys)} tensor (found {sorted(tensors)})")

    positive_file = load_file(str(resolve_model(options.text_embeds))) if options.text_embeds else {}
    positive = pick(options.text_embeds, positive_file, "prompt_embeds") if options.text_embeds \
        else torch.zeros(1, 8, text_dim)
    if options.negative_text_embeds:
        negative = pick(options.negative_text_embeds, load_file(str(resolve_model(options.negative_text_embeds))),
                        "negative_prompt_embeds", "prompt_embeds")
    elif "negative_prompt_embeds" in positive_file:
        negative = positive_file["negative_prompt_embeds"]
    else:
        negative = torch.zeros_like(positive) if options.text_embeds else None
    return positive, negative


def diffuse(loaded: DiffusionModel, reference_image: np.ndarray, batches: Iterator[AnimationBatch],
            options: AnimateOptions, stages: _Stages) -> Iterator[AnimationBatch]:
    """Generate with the diffusion model from the whole control video (the sampler chunks it itself); the preview
    frames are its init video when ``denoise < 1``.

    The control (and init) video is gathered whole, since its latents are encoded in one pass; the output is
    decoded and handed on as it is generated, in batches of 1 then 4 frames (one latent frame each), so the
    decoded video is never held whole and the first frames are written while later chunks are being denoised.
    """
    controls, previews, masks = [], [], []
    for batch in batches:
        controls.append(batch.control.cpu())
        previews.append(batch.output.cpu())
        masks.append(batch.mask.cpu())
    control, mask = torch.cat(controls), torch.cat(masks)
    init = torch.cat(previews) if options.denoise < 1.0 else None
    del controls, previews, masks  # the joined copies above are what is used while generating
    reference = torch.from_numpy(reference_image).float()[None] / 255.0
    frames = stages.run("diffusion", loaded.pipeline.iter_video, reference, control, loaded.prompt_embeds,
                        loaded.negative_prompt_embeds, init_video=init, num_inference_steps=options.steps,
                        guidance_scale=options.guidance_scale, chunk_frames=options.chunk_frames,
                        overlap_frames=options.overlap_frames, denoise=options.denoise, seed=options.seed,
                        on_chunk=lambda done, total: stages.report("diffusion", done, total))
    start = 0
    while True:
        output = stages.run("diffusion", next, frames, None)
        if output is None:
            break
        stop = start + output.shape[0]
        yield AnimationBatch(start, control[start:stop], output, mask[start:stop])
        start = stop


def as_float(frames: torch.Tensor) -> torch.Tensor:
    return frames.float() / 255.0 if frames.dtype == torch.uint8 else frames


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    if frames.dtype == torch.uint8:
        return frames.cpu().numpy()
    return (frames.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


# ---------------------------------------------------------------------------------------------------- main job
def animate(reference: str | os.PathLike, driving: str | os.PathLike, out: str | os.PathLike,
            options: AnimateOptions | None = None, *, save_control: str | os.PathLike | None = None,
            save_track: str | os.PathLike | None = None, montage: str | os.PathLike | None = None,
            progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> AnimateResult:
    """Run the whole chain from files and write ``out`` (mp4); see the module docstring."""
    options = options or AnimateOptions()
    _check_inputs(reference, driving)
    stages = _Stages(progress, cancel)
    pipeline = stages.run("load_diffusion", load_diffusion, options) if options.model is not None else None
    model = stages.run("load_model", load_body_model, "anny", options.device)
    reference_image = read_image(reference)
    ref_track, drv_track = track_inputs(model, reference_image, driving, options, stages)
    if save_track is not None:
        folder = Path(save_track)
        ref_track.save(folder / "reference.safetensors")
        drv_track.save(folder / "driving.safetensors")
    aligned, batches = animation(model, reference_image, ref_track, drv_track, pipeline, options, stages)
    if save_track is not None:
        aligned.track.save(Path(save_track) / "output.safetensors")
    fps = float(options.fps or drv_track.fps)
    height, width = aligned.track.image_size
    keep = set(montage_indices(aligned.track.num_frames)) if montage is not None else set()
    kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    written = 0
    with ExitStack() as stack:
        writer = stack.enter_context(VideoWriter(out, fps))
        control_writer = stack.enter_context(VideoWriter(save_control, fps)) if save_control else None
        for batch in batches:
            control, output = to_uint8(batch.control), to_uint8(batch.output)
            begin = time.perf_counter()
            for i in range(output.shape[0]):
                writer.write(output[i])
                if control_writer is not None:
                    control_writer.write(control[i])
                if batch.start + i in keep:
                    kept[batch.start + i] = (control[i], output[i])
            stages.seconds["write"] = stages.seconds.get("write", 0.0) + time.perf_counter() - begin
            written += output.shape[0]
    result = AnimateResult(Path(out), written, (height, width), fps, stages.seconds,
                           Path(save_control) if save_control else None, Path(save_track) if save_track else None)
    if montage is not None:
        result.montage = write_montage(montage, aligned.reference_image, driving, options.start, kept)
    return result


def montage_indices(frames: int, count: int = 4) -> list[int]:
    """``count`` frames spread over the video (first and last included)."""
    if frames <= count:
        return list(range(frames))
    return [round(i * (frames - 1) / (count - 1)) for i in range(count)]


def write_montage(path: str | os.PathLike, reference: np.ndarray, driving: str | os.PathLike, start: int,
                  kept: dict[int, tuple[np.ndarray, np.ndarray]], row_height: int = 320) -> Path:
    """One PNG: the (aligned) reference, then per kept frame a column of driving / control / output."""
    indices = sorted(kept)
    wanted = {start + i for i in indices}
    driving_frames = {}
    if indices:
        for index, frame in enumerate(iter_frames(driving, start=start, max_frames=max(indices) + 1)):
            if start + index in wanted:
                driving_frames[index] = frame

    def fit(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        return cv2.resize(image, (max(1, round(w * row_height / h)), row_height), interpolation=cv2.INTER_AREA)

    def label(image: np.ndarray, text: str) -> np.ndarray:
        image = image.copy()
        cv2.putText(image, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(image, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
        return image

    ref = label(fit(reference), "reference")
    blank = np.full_like(ref, 255)
    columns = [np.concatenate([ref, blank, blank], axis=0)]
    for i in indices:
        control, output = kept[i]
        cells = [label(fit(driving_frames[i]), f"driving {start + i}"), label(fit(control), "control"),
                 label(fit(output), "output")]
        width = max(c.shape[1] for c in cells)
        cells = [np.pad(c, ((0, 0), (0, width - c.shape[1]), (0, 0)), constant_values=255) for c in cells]
        columns.append(np.concatenate(cells, axis=0))
    return write_image(path, np.concatenate(columns, axis=1))
