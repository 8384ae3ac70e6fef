"""Chunked long-video generation: the one chunk planner and the latent assembly shared by every host.

Everything here works in *latent* frames of a Wan-style causal video VAE (latent frame 0 = pixel frame 0, latent
frame i >= 1 = pixel frames 4i-3..4i). A chunk is a window of latent frames that is denoised in one sampler run;
consecutive windows overlap and are cross-faded with the planner's weights. Each window's model input is the
paper's sequence ``[reference][spatially-aligned][temporal ...][noisy ...]`` along time, with a mask that marks the
clean conditioning frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..errors import InputError
from .adapter import MotionAdapter, inject_motion

VAE_TEMPORAL_STRIDE = 4
VAE_SPATIAL_STRIDE = 8


@dataclass(frozen=True)
class Chunk:
    """Latent frames ``start:stop`` of the video, and the cross-fade weight of each of them in the output."""

    index: int
    start: int
    stop: int
    weights: torch.Tensor

    @property
    def length(self) -> int:
        return self.stop - self.start


def latent_frame_count(pixel_frames: int) -> int:
    """Latent frames the VAE makes of ``pixel_frames`` frames (padded up to 4k+1)."""
    if pixel_frames < 1:
        raise InputError(f"A video needs at least one frame, got {pixel_frames}.")
    return (pixel_frames - 1 + VAE_TEMPORAL_STRIDE - 1) // VAE_TEMPORAL_STRIDE + 1


def pixel_to_latent_chunking(chunk_frames: int, overlap_frames: int) -> tuple[int, int]:
    """Chunk length/overlap in pixel frames (what users type) → latent frames (what the planner takes)."""
    if chunk_frames < 1 or overlap_frames < 0:
        raise InputError(f"chunk_frames must be >= 1 and overlap_frames >= 0, got {chunk_frames}, {overlap_frames}.")
    return (chunk_frames - 1) // VAE_TEMPORAL_STRIDE + 1, math.ceil(overlap_frames / VAE_TEMPORAL_STRIDE)


def plan_chunks(num_frames: int, chunk_frames: int, overlap_frames: int) -> list[Chunk]:
    """Split ``num_frames`` latent frames into windows of ``chunk_frames`` overlapping by ``overlap_frames``.

    Windows start every ``chunk_frames - overlap_frames`` frames; the last one is cut at the video's end. Inside an
    overlap the earlier window fades out and the later one fades in linearly; the weights of every frame sum to 1.
    """
    if num_frames < 1:
        raise InputError(f"Nothing to generate: {num_frames} latent frames.")
    if chunk_frames < 1:
        raise InputError(f"chunk length must be >= 1 latent frame, got {chunk_frames}.")
    if not 0 <= overlap_frames < chunk_frames:
        raise InputError(f"overlap ({overlap_frames}) must be >= 0 and smaller than the chunk ({chunk_frames}).")
    stride = chunk_frames - overlap_frames
    windows: list[tuple[int, int]] = []
    start = 0
    while True:
        stop = min(start + chunk_frames, num_frames)
        windows.append((start, stop))
        if stop == num_frames:
            break
        start += stride
    raw: list[torch.Tensor] = []
    for i, (start, stop) in enumerate(windows):
        w = torch.ones(stop - start, dtype=torch.float32)
        if i > 0:
            fade_in = windows[i - 1][1] - start
            w[:fade_in] = torch.arange(1, fade_in + 1, dtype=torch.float32) / (fade_in + 1)
        if i + 1 < len(windows):
            fade_out = stop - windows[i + 1][0]
            w[w.numel() - fade_out:] = torch.minimum(
                w[w.numel() - fade_out:], torch.arange(fade_out, 0, -1, dtype=torch.float32) / (fade_out + 1))
        raw.append(w)
    total = torch.zeros(num_frames)
    for (start, stop), w in zip(windows, raw):
        total[start:stop] += w
    return [Chunk(i, start, stop, w / total[start:stop]) for i, ((start, stop), w) in enumerate(zip(windows, raw))]


@dataclass(frozen=True)
class ChunkConditioning:
    """Clean conditioning latents placed before a chunk's noisy latents, in the paper's order."""

    latents: torch.Tensor  # [B, C, n_reference + n_spatial + n_temporal, H, W]
    num_reference: int
    num_spatial: int
    num_temporal: int

    @property
    def num_frames(self) -> int:
        return self.latents.shape[2]

    def frame_mask(self, num_noisy: int) -> torch.Tensor:
        """``[num_frames + num_noisy]`` bool: True on conditioning frames, False on frames being generated."""
        mask = torch.zeros(self.num_frames + num_noisy, dtype=torch.bool)
        mask[: self.num_frames] = True
        return mask

    def prepend(self, noisy: torch.Tensor, latent_channels: int) -> torch.Tensor:
        """Concatenate the conditioning in time before a model input ``noisy`` ``[B, C_in, T, H, W]``.

        A text-to-video DiT takes ``C_in == latent_channels``. An image-to-video/Animate DiT takes
        ``C_in == 2 * latent_channels + 4`` (latent, 4 mask channels, condition latent): there the conditioning
        frames carry mask 1 and their own latent as condition, so the model sees them as known frames.
        """
        cond = self.latents.to(device=noisy.device, dtype=noisy.dtype)
        if cond.shape[0] not in (1, noisy.shape[0]):
            raise InputError(f"Conditioning batch {cond.shape[0]} does not fit model batch {noisy.shape[0]}.")
        cond = cond.expand(noisy.shape[0], -1, -1, -1, -1)
        if cond.shape[3:] != noisy.shape[3:]:
            raise InputError(f"Wrong size: conditioning latents are {list(cond.shape[3:])} (h, w), the generated "
                             f"latents {list(noisy.shape[3:])}; reference and control must have the output's size.")
        channels = noisy.shape[1]
        if channels == latent_channels:
            full = cond
        elif channels == 2 * latent_channels + 4:
            ones = torch.ones_like(cond[:, :4])
            full = torch.cat([cond, ones, cond], dim=1)
        else:
            raise InputError(f"Model input has {channels} channels; EMOSH supports {latent_channels} (text-to-video) "
                             f"or {2 * latent_channels + 4} (image-to-video / Animate) channels.")
        return torch.cat([full, noisy], dim=2)


class ChunkAssembler:
    """Builds each chunk's conditioning and cross-fades the chunks' outputs into one latent video.

    Memory stays bounded in the number of chunks: it holds the output latent video and nothing per chunk.
    Temporal latents of chunk k are the ``temporal_frames`` finished latent frames just before its window (with no
    overlap: the last frames of chunk k-1). The spatially-aligned latent is the first latent frame of chunk 0's
    output: the reference identity already placed in the driving video's framing.
    """

    def __init__(self, chunks: list[Chunk], reference_latent: torch.Tensor, temporal_frames: int = 1,
                 use_spatial_latent: bool = True, device: torch.device | str | None = None) -> None:
        if reference_latent.ndim != 5 or reference_latent.shape[2] != 1:
            raise InputError(f"Reference latent must be [B, C, 1, H, W], got {list(reference_latent.shape)}.")
        if temporal_frames < 0:
            raise InputError(f"temporal_frames must be >= 0, got {temporal_frames}.")
        strides = [b.start - a.start for a, b in zip(chunks, chunks[1:])]
        if strides and temporal_frames > min(strides):
            raise InputError(f"temporal_frames ({temporal_frames}) must not exceed the chunk stride ({min(strides)} "
                             f"latent frames): those frames would not be finished yet.")
        self.chunks = chunks
        self.temporal_frames = temporal_frames
        self.use_spatial_latent = use_spatial_latent
        device = reference_latent.device if device is None else torch.device(device)
        self.reference = reference_latent.to(device)
        b, c, _, h, w = reference_latent.shape
        self.output = torch.zeros(b, c, chunks[-1].stop, h, w, dtype=reference_latent.dtype, device=device)
        self.spatial: torch.Tensor | None = None

    def conditioning(self, chunk: Chunk) -> ChunkConditioning:
        """The clean latents placed before ``chunk``'s noisy latents."""
        parts = [self.reference]
        n_spatial = n_temporal = 0
        if chunk.index > 0:
            if self.use_spatial_latent and self.spatial is not None:
                parts.append(self.spatial)
                n_spatial = 1
            if self.temporal_frames:
                parts.append(self.output[:, :, chunk.start - self.temporal_frames:chunk.start])
                n_temporal = self.temporal_frames
        return ChunkConditioning(torch.cat(parts, dim=2), 1, n_spatial, n_temporal)

    def add(self, chunk: Chunk, samples: torch.Tensor) -> None:
        """Blend a finished chunk's latents ``[B, C, chunk.length, H, W]`` into the output."""
        if samples.shape[2] != chunk.length or samples.shape[3:] != self.output.shape[3:]:
            raise InputError(f"Chunk {chunk.index} produced {list(samples.shape)}, expected "
                             f"{chunk.length} frames of {list(self.output.shape[3:])}.")
        samples = samples.to(device=self.output.device, dtype=self.output.dtype)
        weights = chunk.weights.to(device=self.output.device, dtype=self.output.dtype).view(1, 1, -1, 1, 1)
        self.output[:, :, chunk.start:chunk.stop] += weights * samples
        if chunk.index == 0:
            self.spatial = samples[:, :, :1].clone()


def iter_denoised_latents(noise: torch.Tensor, reference_latent: torch.Tensor, chunk_frames: int,
                          overlap_frames: int,
                          denoise_chunk: Callable[[Chunk, ChunkConditioning, torch.Tensor], torch.Tensor],
                          temporal_frames: int = 1, use_spatial_latent: bool = True,
                          on_chunk: Callable[[int, int], None] | None = None,
                          device: torch.device | str | None = None) -> Iterator[torch.Tensor]:
    """The chunk loop of every host, streamed: after each window, the latent frames ``[B, C, n, h, w]`` that no
    later window changes (those before the next window's start), in order; together they are the whole video.

    A consumer can decode and write them while later windows are still being denoised, so the decoded video is
    never held whole. ``noise`` covers the whole video (one seeded draw, so overlapping chunks share it);
    ``chunk_frames`` and ``overlap_frames`` are pixel frames. Each window is denoised by the host's
    ``denoise_chunk(chunk, conditioning, chunk_noise)`` (its own sampler; it slices per-window inputs such as init
    latents with ``chunk.start:stop``) and cross-faded into the output; ``on_chunk(done, total)`` follows each
    window. The yielded tensors are views of the assembled latents: read them, do not write to them.
    """
    chunks = plan_chunks(noise.shape[2], *pixel_to_latent_chunking(chunk_frames, overlap_frames))
    assembler = ChunkAssembler(chunks, reference_latent, temporal_frames, use_spatial_latent, device)
    finished = 0
    for chunk in chunks:
        samples = denoise_chunk(chunk, assembler.conditioning(chunk), noise[:, :, chunk.start:chunk.stop])
        assembler.add(chunk, samples)
        if on_chunk is not None:
            on_chunk(chunk.index + 1, len(chunks))
        final = chunks[chunk.index + 1].start if chunk.index + 1 < len(chunks) else chunk.stop
        yield assembler.output[:, :, finished:final]
        finished = final


def denoise_in_chunks(noise: torch.Tensor, reference_latent: torch.Tensor, chunk_frames: int, overlap_frames: int,
                      denoise_chunk: Callable[[Chunk, ChunkConditioning, torch.Tensor], torch.Tensor],
                      temporal_frames: int = 1, use_spatial_latent: bool = True,
                      on_chunk: Callable[[int, int], None] | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """:func:`iter_denoised_latents` run to the end: the whole latent video ``[B, C, T, h, w]`` (for hosts that
    hand the latent video on whole, such as ComfyUI's LATENT output)."""
    return torch.cat(list(iter_denoised_latents(noise, reference_latent, chunk_frames, overlap_frames, denoise_chunk,
                                                temporal_frames, use_spatial_latent, on_chunk, device)), dim=2)


def pad_video_to_latent_grid(frames: torch.Tensor) -> torch.Tensor:
    """Repeat the last frame of ``[N, ...]`` so N becomes 4k+1, the frame counts a Wan VAE encodes exactly."""
    target = (latent_frame_count(frames.shape[0]) - 1) * VAE_TEMPORAL_STRIDE + 1
    if target == frames.shape[0]:
        return frames
    return torch.cat([frames, frames[-1:].expand(target - frames.shape[0], *frames.shape[1:])], dim=0)


def check_video_inputs(control: torch.Tensor, reference: torch.Tensor, init_video: torch.Tensor | None = None,
                       multiple: int = VAE_SPATIAL_STRIDE * 2) -> None:
    """Validate IMAGE-layout inputs (``[N, H, W, C]``, 0..1) before any model runs, with errors users can act on."""
    if control.ndim != 4 or control.shape[-1] < 3:
        raise InputError(f"Control frames must be an IMAGE batch [N, H, W, 3], got {list(control.shape)}.")
    n, h, w = control.shape[:3]
    for name, video in (("control frames", control), ("reference image", reference), ("init video", init_video)):
        if video is not None and not torch.isfinite(video).all():
            raise InputError(f"The {name} contain NaN or Inf values; check the node that produced them.")
    if h % multiple or w % multiple:
        raise InputError(f"Wrong size: control frames are {w}x{h}; width and height must be multiples of {multiple}.")
    if reference.ndim == 3:
        reference = reference[None]
    if reference.ndim != 4 or reference.shape[1:3] != (h, w):
        raise InputError(f"Wrong size: reference image is {list(reference.shape)} but control frames are {w}x{h}; "
                         f"align the reference to the control video first (same width and height).")
    if init_video is not None:
        if init_video.ndim != 4 or init_video.shape[0] != n:
            raise InputError(f"Frame count mismatch: init video has {init_video.shape[0]} frames, control video {n}.")
        if init_video.shape[1:3] != (h, w):
            raise InputError(f"Wrong size: init video is {init_video.shape[2]}x{init_video.shape[1]}, "
                             f"control frames {w}x{h}.")


def frame_timesteps(timestep: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Per-frame timesteps ``[B, T]`` from one timestep per sample ``[B]`` and a ``[T]`` clean-frame mask.

    Clean conditioning frames get timestep 0 (noise level 0: they are known), the frames being generated keep the
    sampler's timestep, so a text-to-video DiT that takes per-frame timesteps is told which frames are clean.
    """
    keep = (~frame_mask).to(device=timestep.device, dtype=timestep.dtype)
    return timestep.reshape(-1, 1) * keep.reshape(1, -1)


def run_model_on_chunk(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noisy: torch.Tensor,
                       latent_channels: int, patch_embedding: torch.nn.Module,
                       conditioning: ChunkConditioning | None = None, adapter: MotionAdapter | None = None,
                       motion_latents: torch.Tensor | None = None, factor: float = 0.0) -> torch.Tensor:
    """One DiT call on a chunk, the same for every host.

    Prepends the clean conditioning frames in time, adds the motion tokens to the noisy frames' patch embeddings
    while ``forward(model_input, frame_mask)`` runs, and returns the prediction for the noisy frames only.
    ``frame_mask`` ``[T]`` (bool, True on clean conditioning frames) is for hosts whose model takes per-frame
    timesteps (see :func:`frame_timesteps`); image-to-video inputs also carry it in their mask channels.
    """
    first = 0
    frame_mask = torch.zeros(noisy.shape[2], dtype=torch.bool)
    if conditioning is not None:
        frame_mask = conditioning.frame_mask(noisy.shape[2])
        noisy = conditioning.prepend(noisy, latent_channels)
        first = conditioning.num_frames
    if adapter is None or motion_latents is None:
        factor = 0.0
    with inject_motion(patch_embedding, adapter, motion_latents, first, factor):
        out = forward(noisy, frame_mask)
    return out[:, :, first:]
