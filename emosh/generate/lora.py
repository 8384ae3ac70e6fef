"""LoRA on the Wan DiT's attention projections: the trainable layer, and the one file format both hosts read.

The file uses the key layout every ComfyUI LoRA loader reads for any model (``lora_unet_<native module path with
dots as underscores>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``) with the *native* Wan module names
(``blocks.0.self_attn.q``), so the Hybrid Motion Injector hands it to ComfyUI's own LoRA patching (which also
works on fp8 and offloaded weights); :func:`load_lora` maps the same keys back onto diffusers' module names.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import InputError
from ..safeio import read_safetensors

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_FILENAME = "emosh_lora.safetensors"  # inside the adapter folder, so one folder holds what was trained
LORA_FORMAT = "emosh-lora-kohya"
KOHYA_PREFIX = "lora_unet_"
# diffusers WanTransformer3DModel module names → the original Wan / ComfyUI names (inverse of diffusers' converter)
DIFFUSERS_TO_NATIVE = {"attn1": "self_attn", "attn2": "cross_attn", "to_q": "q", "to_k": "k", "to_v": "v",
                       "to_out.0": "o"}


class LoRALinear(torch.nn.Module):
    """A frozen Linear plus a trainable low-rank update ``B @ A`` (B zero-initialised: starts as the base).

    A is drawn from ``generator`` (default: torch's global stream), so a seeded training run starts from the same
    LoRA every time it is launched."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base = base
        self.rank = rank
        self.alpha = alpha
        self.scale = alpha / rank
        self.lora_a = torch.nn.Parameter(torch.randn(rank, base.in_features, generator=generator)
                                         / math.sqrt(base.in_features))
        self.lora_b = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.lora_a.t().to(x.dtype)) @ self.lora_b.t().to(x.dtype)


def add_lora(transformer: torch.nn.Module, rank: int, alpha: float,
             generator: torch.Generator | None = None) -> dict[str, LoRALinear]:
    """Wrap every attention projection of the DiT in a :class:`LoRALinear` (A drawn from ``generator``, a CPU
    generator or None); returns them by module name."""
    found = [(name, module) for name, module in transformer.named_modules()
             if isinstance(module, torch.nn.Linear) and name.endswith(LORA_TARGETS)]
    layers = {}
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        lora = LoRALinear(module, rank, alpha, generator).to(module.weight.device)
        setattr(transformer.get_submodule(parent_name), child, lora)
        layers[name] = lora
    return layers


def native_module_name(name: str) -> str:
    """``blocks.3.attn1.to_out.0`` (diffusers) → ``blocks.3.self_attn.o`` (original Wan, ComfyUI)."""
    prefix, _, rest = name.partition(".attn")
    attn, _, proj = ("attn" + rest).partition(".")
    if not prefix.startswith("blocks.") or attn not in DIFFUSERS_TO_NATIVE or proj not in DIFFUSERS_TO_NATIVE:
        raise InputError(f"No native Wan name for the LoRA target {name!r} (only blocks.N.attn1/attn2 projections).")
    return f"{prefix}.{DIFFUSERS_TO_NATIVE[attn]}.{DIFFUSERS_TO_NATIVE[proj]}"


def kohya_key(name: str) -> str:
    """The key ComfyUI maps onto ``diffusion_model.<native name>.weight``, for a diffusers module name."""
    return KOHYA_PREFIX + native_module_name(name).replace(".", "_")


def save_lora(lora: dict[str, LoRALinear], path: str | Path) -> None:
    """LoRA weights as safetensors: ``<key>.lora_down.weight`` ``[rank, in]`` (A), ``<key>.lora_up.weight``
    ``[out, rank]`` (B) and ``<key>.alpha`` (the update is ``alpha / rank * up @ down``, ComfyUI's rule)."""
    tensors = {}
    for name, layer in lora.items():
        key = kohya_key(name)
        tensors[f"{key}.lora_down.weight"] = layer.lora_a.detach().float().cpu().contiguous()
        tensors[f"{key}.lora_up.weight"] = layer.lora_b.detach().float().cpu().contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(layer.alpha))
    save_file(tensors, str(path), metadata={"format": LORA_FORMAT})


def load_lora(transformer: torch.nn.Module, path: str | Path) -> dict[str, LoRALinear]:
    """Attach LoRA weights written by :func:`save_lora` to a diffusers Wan DiT (the diffusers host)."""
    tensors, _ = read_safetensors(path)
    targets = {kohya_key(name): name for name, module in transformer.named_modules()
               if isinstance(module, torch.nn.Linear) and name.endswith(LORA_TARGETS)}
    keys = sorted({k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors})
    unknown = [k for k in keys if k not in targets]
    if unknown:
        raise InputError(f"{path}: LoRA keys {unknown[:3]} match no attention projection of this transformer.")
    layers = {}
    for key in keys:
        name = targets[key]
        down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
        alpha = float(tensors[f"{key}.alpha"]) if f"{key}.alpha" in tensors else float(down.shape[0])
        parent_name, _, child = name.rpartition(".")
        base = transformer.get_submodule(name)
        layer = LoRALinear(base, down.shape[0], alpha).to(base.weight.device)
        with torch.no_grad():
            layer.lora_a.copy_(down)
            layer.lora_b.copy_(up)
        setattr(transformer.get_submodule(parent_name), child, layer)
        layers[name] = layer
    return layers


def adapter_lora_path(adapter_path: str | Path) -> Path | None:
    """The LoRA trained with an adapter: ``emosh_lora.safetensors`` in the adapter's folder, if there is one."""
    path = Path(adapter_path)
    candidate = (path if path.is_dir() else path.parent) / LORA_FILENAME
    return candidate if candidate.is_file() else None
