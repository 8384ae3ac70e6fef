"""Smoothing over time, shared by the tracker (fitted parameters), face crops (boxes) and retarget (visibility)."""
from __future__ import annotations

import math

import torch


def gaussian_filter(values: torch.Tensor, sigma: float) -> torch.Tensor:
    """Zero-phase Gaussian smoothing over frames (dim 0; any trailing shape), ``sigma`` in frames, edges reflected
    (clips shorter than the kernel are padded by repetition beyond the reflection)."""
    t = values.shape[0]
    if sigma <= 0 or t < 2:
        return values
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, device=values.device, dtype=values.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    flat = values.reshape(t, -1).T[:, None]  # [C, 1, T]
    pad = min(radius, t - 1)
    flat = torch.nn.functional.pad(flat, (pad, pad), mode="reflect")
    if pad < radius:
        flat = torch.nn.functional.pad(flat, (radius - pad, radius - pad), mode="replicate")
    out = torch.nn.functional.conv1d(flat, kernel.view(1, 1, -1))
    return out[:, 0].T.reshape(values.shape)
