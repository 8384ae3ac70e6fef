"""The one way EMOSH reads tensors from disk: safetensors, never pickle.

A pickled ``.pt``/``.ckpt`` (even renamed ``.safetensors``) can run code when loaded; safetensors cannot. Anything
that is not a valid safetensors file is refused with a message instead of a raw parser error.
"""
from __future__ import annotations

import os

import torch
from safetensors import SafetensorError, safe_open

from .errors import InputError


def read_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu",
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the header metadata of ``path``."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(
            f"{path} is not a safetensors file ({exc}). EMOSH loads tensors only from .safetensors files; convert "
            f"a .pt/.ckpt with a tool you trust, or re-download the .safetensors version.") from exc


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Only the header metadata (cheap: no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path} is not a safetensors file ({exc}).") from exc
