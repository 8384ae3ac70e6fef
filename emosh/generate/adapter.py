"""EMOSH motion adapter: motion latents (VAE latents of the hybrid control frames) → DiT patch tokens.

The paper adds the motion latents to the main token sequence after patch embedding. The adapter is a Conv3d with
the DiT's patch size (the same shape as Wan-Animate's ``pose_patch_embedding``), zero-initialised so an untrained
adapter leaves the base model's output bit-identical. It is applied through a forward hook on the host's
``patch_embedding`` so one code path serves ComfyUI's native ``WanModel`` and diffusers' Wan transformers.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from ..errors import InputError


@dataclass(frozen=True)
class InjectionSchedule:
    """How strongly, and during which part of sampling, motion tokens are added.

    ``start``/``end`` are fractions of the sampling steps: the motion is added at step ``i`` of ``n`` when
    ``start <= i / n < end`` (so ``0, 1`` means every step), like ComfyUI's ControlNet start/end percent.
    """

    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise InputError(f"Motion schedule needs 0 <= start <= end <= 1, got start={self.start}, end={self.end}.")

    def factor(self, progress: float | None) -> float:
        """Multiplier for the motion tokens at ``progress`` = step index / step count (None: always active)."""
        if progress is None:
            return self.strength
        return self.strength if self.start <= progress < self.end else 0.0


class MotionAdapter(ModelMixin, ConfigMixin):
    """Conv3d(latent_channels → dim, kernel = stride = patch_size), zero-initialised.

    A diffusers model, so it is written and read like the Wan transformer it plugs into: ``save_pretrained(folder)``
    (``config.json`` + safetensors weights) and ``from_pretrained(folder)``; :func:`emosh.generate.loaders.load_adapter`
    also reads single files written by EMOSH before that.
    """

    @register_to_config
    def __init__(self, dim: int, patch_size: Sequence[int] = (1, 2, 2), latent_channels: int = 16) -> None:
        super().__init__()
        self.dim = int(dim)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.latent_channels = int(latent_channels)
        self.proj = torch.nn.Conv3d(self.latent_channels, self.dim, kernel_size=self.patch_size,
                                    stride=self.patch_size)
        torch.nn.init.zeros_(self.proj.weight)
        torch.nn.init.zeros_(self.proj.bias)

    @classmethod
    def from_conv(cls, conv: torch.nn.Conv3d) -> "MotionAdapter":
        """Wrap an existing patch-embedding conv (e.g. Wan-Animate's ``pose_patch_embedding``), sharing weights."""
        adapter = cls(conv.out_channels, tuple(conv.kernel_size), conv.in_channels)
        adapter.proj = conv
        return adapter

    def forward(self, motion_latents: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, H, W]`` latents → ``[B, dim, T/pt, H/ph, W/pw]`` tokens (zero-padded up to the patch grid)."""
        if motion_latents.ndim != 5 or motion_latents.shape[1] != self.latent_channels:
            raise InputError(f"Motion latents must be [B, {self.latent_channels}, T, H, W], "
                             f"got {list(motion_latents.shape)}.")
        pad: tuple[int, ...] = ()
        for size, patch in zip(motion_latents.shape[2:], self.patch_size):
            pad = (0, (-size) % patch) + pad
        if any(pad):
            motion_latents = F.pad(motion_latents, pad)
        weight, bias = self.proj.weight, self.proj.bias
        motion_latents = motion_latents.to(device=weight.device, dtype=weight.dtype)
        # F.conv3d, not self.proj(...): module hooks on a host's own conv (Wan-Animate) must not fire here.
        return F.conv3d(motion_latents, weight, bias, stride=self.patch_size)


def add_motion_tokens(embedded: torch.Tensor, motion_tokens: torch.Tensor, first_frame: int,
                      factor: float) -> torch.Tensor:
    """Add ``factor * motion_tokens`` to the token frames ``first_frame:`` of a patch-embedding output.

    ``embedded`` is ``[B, dim, T, H, W]`` (before flattening); frames before ``first_frame`` are conditioning
    frames (reference, spatially-aligned, temporal latents) and are left untouched.
    """
    if embedded.shape[1] != motion_tokens.shape[1] or embedded.shape[3:] != motion_tokens.shape[3:]:
        raise InputError(f"Motion tokens {list(motion_tokens.shape)} do not fit the DiT tokens {list(embedded.shape)}:"
                         f" the control video must have the size of the generated video and the adapter the DiT's "
                         f"width.")
    frames = motion_tokens.shape[2]
    if first_frame + frames != embedded.shape[2]:
        raise InputError(f"Frame count mismatch: {frames} motion latent frames for {embedded.shape[2] - first_frame} "
                         f"generated latent frames; the control video must have as many frames as the output video.")
    out = embedded.clone()
    out[:, :, first_frame:first_frame + frames] += factor * motion_tokens.to(dtype=embedded.dtype)
    return out


@contextmanager
def inject_motion(patch_embedding: torch.nn.Module, adapter: MotionAdapter, motion_latents: torch.Tensor,
                  first_frame: int, factor: float) -> Iterator[None]:
    """While active, every call of ``patch_embedding`` gets the adapter's motion tokens added to its noisy frames.

    A factor of 0 installs nothing, so the host's output stays bit-identical. The hook is removed on exit,
    leaving the host model untouched (no permanent patching, so other packs' patches compose).
    """
    if factor == 0.0:
        yield
        return

    def hook(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if adapter.proj.weight.device != output.device:  # e.g. adapter loaded on CPU, DiT on CUDA
            adapter.to(output.device)
        tokens = adapter(motion_latents.to(output.device))
        if tokens.shape[0] not in (1, output.shape[0]):
            raise InputError(f"Motion latents have batch {tokens.shape[0]}, the model input has {output.shape[0]}.")
        return add_motion_tokens(output, tokens, first_frame, factor)

    handle = patch_embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def step_progress(sigma: float, sample_sigmas: Sequence[float] | torch.Tensor) -> float:
    """Fraction of sampling done when the model is evaluated at ``sigma`` (the index of its step / step count).

    Hosts that only see sigmas (ComfyUI's ``transformer_options``) use it to apply :class:`InjectionSchedule`;
    evaluations between two sigmas (second-order samplers) count as the earlier step.
    """
    sigmas = torch.as_tensor(sample_sigmas, dtype=torch.float64).flatten()
    steps = max(1, sigmas.numel() - 1)
    index = int((sigmas[:-1] >= float(sigma) - 1e-6).sum().item()) - 1
    return min(max(index, 0), steps - 1) / steps
