"""diffusers host: the EMOSH generator on diffusers' Wan transformers, Wan VAE and a flow-matching scheduler.

The same adapter, chunk planner and latent assembly as the ComfyUI host; here the denoising loop is written out
(Euler flow matching with classifier-free guidance). Weights load through :mod:`.loaders` (local safetensors only).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from ..errors import InputError
from .adapter import InjectionSchedule, MotionAdapter
from .chunks import (Chunk, ChunkConditioning, check_video_inputs, frame_timesteps, iter_denoised_latents,
                     pad_video_to_latent_grid, run_model_on_chunk)
from .loaders import load_adapter, load_transformer, load_vae


@dataclass
class EmoshOutput:
    """Normalised latents ``[1, C, T, h, w]`` and, unless decoding was skipped, frames ``[N, H, W, 3]`` in 0..1."""

    latents: torch.Tensor
    video: torch.Tensor | None


class EmoshPipeline:
    """Reference image + control video (+ text embeddings) → video, in chunks, on diffusers components."""

    def __init__(self, transformer: torch.nn.Module, vae: torch.nn.Module, scheduler,
                 adapter: MotionAdapter | None = None) -> None:
        self.transformer = transformer
        self.vae = vae
        self.scheduler = scheduler
        self.is_animate = hasattr(transformer, "pose_patch_embedding")
        if adapter is None and self.is_animate:
            adapter = MotionAdapter.from_conv(transformer.pose_patch_embedding)
        if adapter is None:
            raise InputError("EmoshPipeline needs EMOSH adapter weights (adapter=...) unless the transformer is a "
                             "Wan-Animate model, whose pose_patch_embedding takes the motion latents.")
        dim = transformer.patch_embedding.out_channels
        if adapter.dim != dim or adapter.patch_size != tuple(transformer.patch_embedding.kernel_size):
            raise InputError(f"Adapter (dim {adapter.dim}, patch {adapter.patch_size}) does not fit the transformer "
                             f"(dim {dim}, patch {tuple(transformer.patch_embedding.kernel_size)}).")
        self.adapter = adapter
        self.latent_channels = int(vae.config.z_dim)

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, vae: str | os.PathLike | None = None,
                        adapter: str | os.PathLike | None = None, flow_shift: float = 3.0,
                        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> "EmoshPipeline":
        """Load from a diffusers folder (transformer/, vae/) or single files; ``adapter`` is a safetensors file."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        transformer = load_transformer(model, dtype=dtype).to(device)
        vae_model = load_vae(vae if vae is not None else model).to(device)
        motion = load_adapter(adapter).to(device, dtype) if adapter is not None else None
        return cls(transformer, vae_model, FlowMatchEulerDiscreteScheduler(shift=flow_shift), motion)

    @property
    def device(self) -> torch.device:
        return self.transformer.patch_embedding.weight.device

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.vae.config.latents_mean, device=like.device, dtype=like.dtype).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.vae.config.latents_std, device=like.device, dtype=like.dtype).view(1, -1, 1, 1, 1)
        return mean, std

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """IMAGE-layout frames ``[N, H, W, 3]`` in 0..1 → normalised latents ``[1, C, T, h, w]``."""
        frames = pad_video_to_latent_grid(frames[..., :3])
        pixels = frames.permute(3, 0, 1, 2)[None].to(self.device, self.vae.dtype) * 2.0 - 1.0
        raw = self.vae.encode(pixels).latent_dist.mode()
        mean, std = self._latent_stats(raw)
        return (raw - mean) / std

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[1, C, T, h, w]`` → frames ``[4(T-1)+1, H, W, 3]`` in 0..1."""
        return torch.cat(list(StreamingVaeDecoder(self).decode(latents)))

    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        """Noisy latents plus empty condition channels when the transformer expects them (i2v / Animate)."""
        if self.transformer.config.in_channels == self.latent_channels:
            return latents
        extra = self.transformer.config.in_channels - self.latent_channels
        return torch.cat([latents, latents.new_zeros(latents.shape[0], extra, *latents.shape[2:])], dim=1)

    def token_timesteps(self, t: torch.Tensor, frame_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``[B]`` timesteps + ``[T]`` clean-frame mask → ``[B, T * h/ph * w/pw]``, one per DiT token (frame-major,
        the order of the transformer's flattened patch sequence) for latents of ``size`` (h, w)."""
        pt, ph, pw = self.transformer.config.patch_size
        if pt != 1:
            raise InputError(f"Per-frame timesteps need a temporal patch of 1, this transformer has {pt}.")
        per_frame = frame_timesteps(t, frame_mask)
        return per_frame.repeat_interleave((size[0] // ph) * (size[1] // pw), dim=1)

    def predict(self, model_in: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                image_embeds: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One transformer call on a full model input (conditioning frames included); ``t`` is ``[B]`` in 0..1000.

        ``frame_mask`` ``[T]`` (True on clean conditioning frames) becomes per-token timesteps ``[B, T*h*w/4]``
        with 0 on the clean frames for ``WanTransformer3DModel``, whose forward takes them (Wan 2.2 TI2V's path).
        ``WanAnimateTransformer3DModel`` takes one timestep per sample only; there the mask reaches the model
        through its mask channels (:meth:`ChunkConditioning.prepend`).
        """
        kwargs = {"encoder_hidden_states_image": image_embeds} if image_embeds is not None else {}
        if not self.is_animate:
            if frame_mask is not None and bool(frame_mask.any()):
                t = self.token_timesteps(t, frame_mask, model_in.shape[3:])
            return self.transformer(model_in, timestep=t, encoder_hidden_states=text, return_dict=False, **kwargs)[0]
        # Animate: our hook supplies the pose tokens, so its built-in pose path gets zeros and no face motion.
        b, _, frames, h, w = model_in.shape
        cfg = self.transformer.config
        pose = model_in.new_zeros(b, self.latent_channels, frames - 1, h, w)
        face = -model_in.new_ones(b, 3, 4 * (frames - 1), cfg.motion_encoder_size, cfg.motion_encoder_size)
        handle = self.transformer.pose_patch_embedding.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
        try:
            return self.transformer(model_in, timestep=t, encoder_hidden_states=text, pose_hidden_states=pose,
                                    face_pixel_values=face, return_dict=False, **kwargs)[0]
        finally:
            handle.remove()

    def __call__(self, reference: torch.Tensor, control: torch.Tensor, prompt_embeds: torch.Tensor,
                 negative_prompt_embeds: torch.Tensor | None = None, init_video: torch.Tensor | None = None,
                 decode: bool = True, **sampling) -> EmoshOutput:
        """Generate a video of the reference person following ``control`` (IMAGE layout ``[N, H, W, 3]``, 0..1).

        ``init_video`` (same length and size, e.g. the preview animator's output) is used with ``denoise < 1``.
        Other keywords go to :meth:`sample_latents`.
        """
        pieces = self._latent_pieces(reference, control, prompt_embeds, negative_prompt_embeds, init_video, sampling)
        latents = torch.cat(list(pieces), dim=2)
        video = self.decode_latents(latents)[: control.shape[0]] if decode else None
        return EmoshOutput(latents, video)

    def iter_video(self, reference: torch.Tensor, control: torch.Tensor, prompt_embeds: torch.Tensor,
                   negative_prompt_embeds: torch.Tensor | None = None, init_video: torch.Tensor | None = None,
                   **sampling) -> Iterator[torch.Tensor]:
        """:meth:`__call__` streamed: the video's frames ``[n, H, W, 3]`` in 0..1, ``control.shape[0]`` in all,
        one latent frame's worth at a time (1 frame, then 4 each), each decoded as soon as the chunk that finishes
        it is done. So a writer gets frames while later chunks are still being denoised, and at most 4 decoded
        frames exist at once (plus whatever the caller keeps). The inputs are checked and encoded on this call."""
        pieces = self._latent_pieces(reference, control, prompt_embeds, negative_prompt_embeds, init_video, sampling)
        return self._decoded(pieces, control.shape[0])

    @torch.no_grad()
    def _latent_pieces(self, reference: torch.Tensor, control: torch.Tensor, prompt_embeds: torch.Tensor,
                       negative_prompt_embeds: torch.Tensor | None, init_video: torch.Tensor | None,
                       sampling: dict) -> Iterator[torch.Tensor]:
        """Check and encode the IMAGE-layout inputs, then :meth:`iter_latents` on their latents."""
        if reference.ndim == 3:
            reference = reference[None]
        check_video_inputs(control, reference, init_video)
        dtype = self.transformer.dtype
        motion = self.encode_video(control).to(dtype)
        ref_latent = self.encode_video(reference[:1]).to(dtype)
        init = self.encode_video(init_video).to(dtype) if init_video is not None else None
        return self.iter_latents(motion, ref_latent, prompt_embeds, negative_prompt_embeds, init_latents=init,
                                 **sampling)

    @torch.no_grad()
    def _decoded(self, pieces: Iterator[torch.Tensor], frames: int) -> Iterator[torch.Tensor]:
        """Decode finished latent pieces as they come; stop at ``frames`` (the last latent frame is padded)."""
        decoder = StreamingVaeDecoder(self)
        emitted = 0
        for piece in pieces:
            for out in decoder.decode(piece):
                yield out[: frames - emitted]
                emitted += out.shape[0]

    def sample_latents(self, motion_latents: torch.Tensor, reference_latent: torch.Tensor,
                       prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor | None = None,
                       **sampling) -> torch.Tensor:
        """Chunked denoising in normalised latent space; the whole video latent ``[1, C, T, h, w]``. Keywords as
        for :meth:`iter_latents`."""
        return torch.cat(list(self.iter_latents(motion_latents, reference_latent, prompt_embeds,
                                                negative_prompt_embeds, **sampling)), dim=2)

    def iter_latents(self, motion_latents: torch.Tensor, reference_latent: torch.Tensor,
                     prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor | None = None,
                     image_embeds: torch.Tensor | None = None, num_inference_steps: int = 20,
                     guidance_scale: float = 5.0, seed: int = 0, chunk_frames: int = 81, overlap_frames: int = 8,
                     temporal_frames: int = 1, use_spatial_latent: bool = True,
                     schedule: InjectionSchedule = InjectionSchedule(), init_latents: torch.Tensor | None = None,
                     denoise: float = 1.0, on_chunk: Callable[[int, int], None] | None = None
                     ) -> Iterator[torch.Tensor]:
        """Chunked denoising in normalised latent space, streamed: the latent frames ``[1, C, n, h, w]`` each
        chunk finishes (:func:`~.chunks.iter_denoised_latents`), in order. The inputs are checked on this call;
        the chunks are denoised as the result is iterated.

        Classifier-free guidance runs when ``negative_prompt_embeds`` is given and ``guidance_scale != 1``: each
        step predicts with the negative and the positive embeddings (one batch of 2) and takes
        ``uncond + guidance_scale * (cond - uncond)``; embeddings of different lengths are zero-padded to the
        longer, as Wan's own text pipeline pads every prompt. Otherwise one unguided prediction per step.
        ``chunk_frames``/``overlap_frames`` are pixel frames; ``temporal_frames`` latent frames before each later
        chunk condition it. The noise of the whole video comes from one seeded generator, so overlapping chunks
        share it. ``on_chunk(done, total)`` is called after each chunk.
        """
        if not 0.0 < denoise <= 1.0:
            raise InputError(f"denoise must be in (0, 1], got {denoise}.")
        if denoise < 1.0 and init_latents is None:
            raise InputError("denoise < 1 keeps part of an init video: pass init_video (or init_latents).")
        if init_latents is not None and init_latents.shape != motion_latents.shape:
            raise InputError(f"Frame count mismatch: init latents {list(init_latents.shape)}, motion latents "
                             f"{list(motion_latents.shape)}.")
        device, dtype = self.device, self.transformer.dtype
        generator = torch.Generator("cpu").manual_seed(int(seed))
        noise = torch.randn(motion_latents.shape, generator=generator, dtype=torch.float32).to(device, dtype)
        use_cfg = negative_prompt_embeds is not None and guidance_scale != 1.0
        text = torch.cat(pad_to_same_length(negative_prompt_embeds, prompt_embeds)) if use_cfg else prompt_embeds
        text = text.to(device, dtype)
        if image_embeds is not None:
            image_embeds = image_embeds.to(device, dtype)
            image_embeds = image_embeds.repeat(2, 1, 1) if use_cfg else image_embeds
        first_step = num_inference_steps - max(1, round(num_inference_steps * denoise))

        @torch.no_grad()
        def denoise_chunk(chunk: Chunk, cond: ChunkConditioning, latents: torch.Tensor) -> torch.Tensor:
            """Euler flow matching with classifier-free guidance over one window."""
            self.scheduler.set_timesteps(num_inference_steps, device=device)
            timesteps = self.scheduler.timesteps[first_step:]
            self.scheduler.set_begin_index(first_step)
            if init_latents is not None and denoise < 1.0:
                init_chunk = init_latents[:, :, chunk.start:chunk.stop].to(device, dtype)
                latents = self.scheduler.scale_noise(init_chunk, timesteps[:1], latents)
            chunk_motion = motion_latents[:, :, chunk.start:chunk.stop]
            for i, t in enumerate(timesteps):
                model_in = self.model_input(torch.cat([latents, latents]) if use_cfg else latents)
                pred = run_model_on_chunk(
                    lambda x, mask: self.predict(x, t.expand(x.shape[0]), text, image_embeds, mask), model_in,
                    self.latent_channels, self.transformer.patch_embedding, cond, self.adapter, chunk_motion,
                    schedule.factor((first_step + i) / num_inference_steps))
                if use_cfg:
                    uncond, condp = pred.chunk(2)
                    pred = uncond + guidance_scale * (condp - uncond)
                latents = self.scheduler.step(pred, t, latents, return_dict=False)[0]
            return latents

        return iter_denoised_latents(noise, reference_latent.to(device, dtype), chunk_frames, overlap_frames,
                                     denoise_chunk, temporal_frames, use_spatial_latent, on_chunk)


def pad_to_same_length(*embeds: torch.Tensor) -> list[torch.Tensor]:
    """Text embeddings ``[B, L_i, D]`` zero-padded along L to the longest, so they stack into one batch."""
    length = max(e.shape[1] for e in embeds)
    return [F.pad(e, (0, 0, 0, length - e.shape[1])) for e in embeds]


class StreamingVaeDecoder:
    """A Wan VAE decode split into pieces of latent frames, giving exactly the frames of one whole decode.

    The Wan VAE decoder is causal: diffusers' ``AutoencoderKLWan.decode`` runs it one latent frame at a time and
    carries the last input frames of every causal convolution in a cache. This runs that loop but keeps the
    cache between calls, so a latent video can be decoded while it is still being generated, and only one latent
    frame's pixels (1 frame for the video's first, 4 after) exist at a time. (The VAE's tiled decode, off by
    default, is not used here.)
    """

    def __init__(self, pipeline: EmoshPipeline) -> None:
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        self.vae = pipeline.vae
        self._latent_stats = pipeline._latent_stats
        self._cache: list = [None] * sum(isinstance(m, WanCausalConv3d) for m in self.vae.decoder.modules())
        self._first = True

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """The next normalised latent frames ``[1, C, n, h, w]`` → for each, its frames ``[1 or 4, H, W, 3]``
        in 0..1 (1 only for the video's first latent frame)."""
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        mean, std = self._latent_stats(latents)
        x = self.vae.post_quant_conv((latents * std + mean).to(self.vae.dtype))  # 1x1x1: frame by frame
        for i in range(x.shape[2]):
            out = self.vae.decoder(x[:, :, i:i + 1], feat_cache=self._cache, feat_idx=[0], first_chunk=self._first)
            self._first = False
            if self.vae.config.patch_size is not None:
                out = unpatchify(out, patch_size=self.vae.config.patch_size)
            yield ((out[0].permute(1, 2, 3, 0).float().clamp(-1.0, 1.0) + 1.0) / 2.0).clamp(0.0, 1.0)
