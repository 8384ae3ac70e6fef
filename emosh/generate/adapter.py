"""EMOSH motion adapter: motion latents (VAE latents of the hybrid control frames) → DiT patch tokens.

The paper adds the motion latents to the main token sequence after patch embedding. The adapter is a Conv3d with
the DiT's patch size (the same shape as Wan-Animate's ``pose_patch_embedding``), zero-initialised so an untrained
adapter leaves the base model's output bit-identical. It is applied through a forward hook on the host's
``patch_embedding`` so one code path serves ComfyUI's native ``WanModel`` and diffusers' Wan transformers.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..errors import InputError, MissingModelError
from ..safeio import read_safetensors

ADAPTER_FORMAT = "emosh-motion-adapter"
ADAPTER_VERSION = 1


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


class MotionAdapter(torch.nn.Module):
    """Conv3d(latent_channels → dim, kernel = stride = patch_size), zero-initialised."""

    def __init__(self, dim: int, patch_size: Sequence[int] = (1, 2, 2), latent_channels: int = 16,
                 conv: torch.nn.Conv3d | None = None) -> None:
        super().__init__()
        self.dim = int(dim)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.latent_channels = int(latent_channels)
        if conv is None:
            conv = torch.nn.Conv3d(self.latent_channels, self.dim, kernel_size=self.patch_size, stride=self.patch_size)
            torch.nn.init.zeros_(conv.weight)
            torch.nn.init.zeros_(conv.bias)
        self.proj = conv

    @classmethod
    def from_conv(cls, conv: torch.nn.Conv3d) -> "MotionAdapter":
        """Wrap an existing patch-embedding conv (e.g. Wan-Animate's ``pose_patch_embedding``), sharing weights."""
        return cls(conv.out_channels, tuple(conv.kernel_size), conv.in_channels, conv=conv)

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

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights as safetensors with the shape settings in the header."""
        meta = {"format": ADAPTER_FORMAT, "version": str(ADAPTER_VERSION),
                "config": json.dumps({"dim": self.dim, "patch_size": list(self.patch_size),
                                      "latent_channels": self.latent_channels})}
        tensors = {"proj.weight": self.proj.weight.detach().cpu().contiguous(),
                   "proj.bias": self.proj.bias.detach().cpu().contiguous()}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str | None = None) -> "MotionAdapter":
        """Load an adapter written by :meth:`save` (safetensors only); a missing file names the path looked for."""
        path = Path(path)
        if not path.is_file():
            raise MissingModelError(f"EMOSH motion adapter not found: looked for {path}. Put the .safetensors file "
                                    f"there (train one with `python -m emosh.train`); nothing is downloaded.")
        if path.suffix != ".safetensors":
            raise InputError(f"EMOSH adapters load from .safetensors only, got {path.name}.")
        tensors, _ = read_safetensors(path)
        missing = {"proj.weight", "proj.bias"} - set(tensors)
        if missing:
            raise InputError(f"{path} is not an EMOSH motion adapter: missing tensors {sorted(missing)}.")
        weight = tensors["proj.weight"]
        adapter = cls(dim=weight.shape[0], patch_size=tuple(weight.shape[2:]), latent_channels=weight.shape[1])
        adapter.load_state_dict(tensors)
        return adapter.to(device) if device is not None else adapter


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
