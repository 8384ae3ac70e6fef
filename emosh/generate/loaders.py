"""Weight loaders of the diffusers host: Wan transformer, Wan VAE and the EMOSH motion adapter.

Local files only (nothing is downloaded) and safetensors only; a missing file names the path looked for.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import InputError, MissingModelError
from ..safeio import read_safetensors, read_safetensors_metadata
from .adapter import MotionAdapter

TRANSFORMER_CLASSES = ("WanTransformer3DModel", "WanAnimateTransformer3DModel")
LEGACY_ADAPTER_FORMAT = "emosh-motion-adapter"  # single files of the first adapter format: config in the header


def _require_file(path: Path, what: str, weights: bool = True) -> Path:
    if not path.exists():
        raise MissingModelError(f"{what} not found: looked for {path}. Weights are never downloaded; put the "
                                f"diffusers folder or .safetensors file there.")
    if weights and path.is_file() and path.suffix != ".safetensors":
        raise InputError(f"{what}: only .safetensors files are loaded, got {path.name}.")
    return path


def _single_file_config(path: Path) -> dict | None:
    """Config stored in a safetensors header (key ``config``) or in ``<stem>.json`` next to the file."""
    meta = read_safetensors_metadata(path)
    if "config" in meta:
        return json.loads(meta["config"])
    sibling = path.with_suffix(".json")
    return json.loads(sibling.read_text()) if sibling.is_file() else None


def _infer_native_wan_config(sd: dict[str, torch.Tensor]) -> dict:
    """diffusers config of a Wan DiT in the original/ComfyUI key layout, read off the tensor shapes."""
    patch = sd["patch_embedding.weight"]
    dim = patch.shape[0]
    cfg = {
        "patch_size": list(patch.shape[2:]), "in_channels": patch.shape[1],
        "out_channels": sd["head.head.weight"].shape[0] // int(torch.tensor(patch.shape[2:]).prod()),
        "num_attention_heads": max(1, dim // 128), "attention_head_dim": dim // max(1, dim // 128),
        "text_dim": sd["text_embedding.0.weight"].shape[1], "freq_dim": sd["time_embedding.0.weight"].shape[1],
        "ffn_dim": sd["blocks.0.ffn.0.weight"].shape[0],
        "num_layers": 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks.")),
    }
    if "img_emb.proj.0.weight" in sd:
        cfg["image_dim"] = sd["img_emb.proj.0.weight"].shape[0]
        cfg["added_kv_proj_dim"] = dim
    return cfg


def load_transformer(path: str | os.PathLike, config: dict | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A diffusers Wan transformer from a diffusers folder or one safetensors file.

    Single files may use diffusers keys (config from ``config``, the safetensors header or ``<stem>.json``) or the
    original Wan / ComfyUI keys (converted with diffusers' converter; shape settings read from the weights, heads
    assumed 128 wide unless ``config`` says otherwise).
    """
    import diffusers
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    path = _require_file(Path(path), "Wan transformer")
    if path.is_dir():
        folder = path / "transformer" if (path / "transformer" / "config.json").is_file() else path
        cfg_file = _require_file(folder / "config.json", "Wan transformer config", weights=False)
        name = json.loads(cfg_file.read_text()).get("_class_name", "WanTransformer3DModel")
        if name not in TRANSFORMER_CLASSES:
            raise InputError(f"{cfg_file} describes a {name}; EMOSH runs on {TRANSFORMER_CLASSES}.")
        return getattr(diffusers, name).from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                                        torch_dtype=dtype)
    sd, _ = read_safetensors(path)
    cfg = dict(config or _single_file_config(path) or {})
    if "patch_embedding.weight" in sd and "head.head.weight" in sd:
        if not cfg and any(k.startswith(("face_adapter.", "vace_")) for k in sd):
            raise InputError(f"{path} is a Wan-Animate/VACE checkpoint in the original layout: its settings cannot "
                             f"be read off the weights; pass config= or use a diffusers folder.")
        cfg = {**_infer_native_wan_config(sd), **cfg}
        sd = convert_wan_transformer_to_diffusers(sd)
    elif not cfg:
        raise InputError(f"{path} uses diffusers keys but carries no config: pass config=, or put {path.stem}.json "
                         f"next to it.")
    name = cfg.pop("_class_name", "WanAnimateTransformer3DModel" if "pose_patch_embedding.weight" in sd
                   else "WanTransformer3DModel")
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    model = getattr(diffusers, name)(**cfg)
    model.load_state_dict(sd, strict=True)
    return model if dtype == torch.float32 else model.to(dtype)


def load_vae(path: str | os.PathLike, config: dict | None = None) -> torch.nn.Module:
    """``AutoencoderKLWan`` from a diffusers folder (or its ``vae/`` subfolder) or one safetensors file."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    path = _require_file(Path(path), "Wan VAE")
    if path.is_dir():
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        _require_file(folder / "config.json", "Wan VAE config", weights=False)
        return AutoencoderKLWan.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    sd, _ = read_safetensors(path)
    cfg = dict(config or _single_file_config(path) or {})
    if "encoder.conv1.weight" in sd:  # original Wan VAE layout
        sd = convert_wan_vae_to_diffusers(sd)
    vae = AutoencoderKLWan(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    vae.load_state_dict(sd, strict=True)
    return vae


def load_adapter(path: str | os.PathLike) -> MotionAdapter:
    """The EMOSH motion adapter from a ``save_pretrained`` folder, or from a file in it (ComfyUI lists the weights
    file of a folder in ``models/emosh/``), or from a single file of the first format (config in its header)."""
    path = Path(path)
    if not path.exists():
        raise MissingModelError(f"EMOSH motion adapter not found: looked for {path}. Put the adapter folder "
                                f"(config.json + .safetensors, from `python -m emosh.train`) there; nothing is "
                                f"downloaded.")
    folder = path if path.is_dir() else path.parent
    if (folder / "config.json").is_file() and (path.is_dir() or path.suffix == ".safetensors"):
        config = json.loads((folder / "config.json").read_text())
        if config.get("_class_name") != MotionAdapter.__name__ or "latent_channels" not in config:
            # diffusers' AnimateDiff adapter shares the class name, not the settings
            raise InputError(f"{folder / 'config.json'} describes a {config.get('_class_name')} with settings "
                             f"{sorted(k for k in config if not k.startswith('_'))[:6]}, not an EMOSH "
                             f"MotionAdapter (dim, patch_size, latent_channels).")
        return MotionAdapter.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    if path.is_dir():
        raise MissingModelError(f"{path} has no config.json: not an EMOSH motion adapter folder (save_pretrained).")
    if path.suffix != ".safetensors":
        raise InputError(f"EMOSH adapters load from .safetensors only, got {path.name}.")
    tensors, meta = read_safetensors(path)
    if meta.get("format") != LEGACY_ADAPTER_FORMAT or {"proj.weight", "proj.bias"} - set(tensors):
        raise InputError(f"{path} is not an EMOSH motion adapter (no config.json beside it, and not an adapter file "
                         f"of the first format: header format={meta.get('format')!r}, tensors {sorted(tensors)[:4]}).")
    adapter = MotionAdapter(**json.loads(meta["config"]))
    adapter.load_state_dict(tensors)
    return adapter
