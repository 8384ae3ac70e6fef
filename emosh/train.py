"""``python -m emosh.train``: fine-tune the EMOSH motion adapter (and optionally LoRA on the DiT attention).

Training pairs are a real video and its hybrid control video rendered from the tracked, *non-retargeted* track
(see docs/generation.md, "Training data"). The objective is Wan's flow matching: the DiT, given the reference latent
(a random frame of the same clip) and optionally temporal latents (the clip's first latent frames) before the noisy
latents, predicts ``noise - x0`` on the noisy frames while the adapter adds the control's motion tokens.
"""
from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import save_file

from .errors import InputError
from .safeio import read_safetensors
from .generate.adapter import MotionAdapter
from .generate.chunks import ChunkConditioning, run_model_on_chunk

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class LoRALinear(torch.nn.Module):
    """A frozen Linear plus a trainable low-rank update ``B @ A`` (B zero-initialised: starts as the base)."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = torch.nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_b = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.lora_a.t().to(x.dtype)) @ self.lora_b.t().to(x.dtype)


def add_lora(transformer: torch.nn.Module, rank: int, alpha: float) -> dict[str, LoRALinear]:
    """Wrap every attention projection of the DiT in a :class:`LoRALinear`; returns them by module name."""
    found = [(name, module) for name, module in transformer.named_modules()
             if isinstance(module, torch.nn.Linear) and name.endswith(LORA_TARGETS)]
    layers = {}
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        lora = LoRALinear(module, rank, alpha).to(module.weight.device)
        setattr(transformer.get_submodule(parent_name), child, lora)
        layers[name] = lora
    return layers


@dataclass
class Sample:
    """One training clip: real frames and control frames ``[N, H, W, 3]`` in 0..1."""

    video: torch.Tensor
    control: torch.Tensor


def find_pairs(data_dir: Path) -> list[tuple[Path, Path]]:
    """``<name>.mp4`` with ``<name>.control.mp4`` beside it (see docs/generation.md)."""
    pairs = []
    for control in sorted(data_dir.glob("*.control.mp4")):
        video = control.with_name(control.name.replace(".control.mp4", ".mp4"))
        if video.is_file():
            pairs.append((video, control))
    if not pairs:
        raise InputError(f"No training pairs in {data_dir}: expected <name>.mp4 next to <name>.control.mp4.")
    return pairs


def _frame_count(path: Path) -> int:
    from .video import probe_video, read_frames

    count = probe_video(path).frames  # 0 when the container does not say
    return count if count > 0 else len(read_frames(path))


def load_clip(video: Path, control: Path, frames: int, size: tuple[int, int], rng: random.Random) -> Sample:
    """A random ``frames``-frame window of a pair (only that window is decoded), resized to ``size`` (h, w)."""
    import torch.nn.functional as F

    from .video import read_frames

    count, control_count = _frame_count(video), _frame_count(control)
    if count != control_count:
        raise InputError(f"Frame count mismatch: {video.name} has {count} frames, {control.name} {control_count}.")
    if count < frames:
        raise InputError(f"{video.name} has {count} frames; training clips need {frames}.")
    start = rng.randrange(count - frames + 1)

    def window(path: Path) -> torch.Tensor:
        x = torch.from_numpy(read_frames(path, start=start, max_frames=frames)).float().div(255.0)
        x = F.interpolate(x.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
        return x.permute(0, 2, 3, 1)

    return Sample(window(video), window(control))


def flow_matching_loss(pipeline, video_latents: torch.Tensor, reference_latent: torch.Tensor,
                       motion_latents: torch.Tensor, text: torch.Tensor, temporal_frames: int,
                       generator: torch.Generator) -> torch.Tensor:
    """Wan flow-matching loss on the noisy frames, with the EMOSH conditioning sequence and motion tokens."""
    parts = [reference_latent]
    if temporal_frames:
        parts.append(video_latents[:, :, :temporal_frames])
    cond = ChunkConditioning(torch.cat(parts, dim=2), 1, 0, temporal_frames)
    x0 = video_latents[:, :, temporal_frames:]
    motion = motion_latents[:, :, temporal_frames:]
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    t = torch.rand(x0.shape[0], generator=generator).to(x0)
    xt = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * noise
    pred = run_model_on_chunk(lambda inp: pipeline.predict(inp, t * 1000.0, text), pipeline.model_input(xt),
                              pipeline.latent_channels, pipeline.transformer.patch_embedding, cond, pipeline.adapter,
                              motion, 1.0)
    return torch.nn.functional.mse_loss(pred.float(), (noise - x0).float())


def train(pipeline, samples: Iterator[Sample], steps: int, lr: float = 1e-4, lora_rank: int = 0,
          lora_alpha: float = 1.0, temporal_frames: int = 1, text: torch.Tensor | None = None, seed: int = 0,
          mixed_precision: str = "no", log_every: int = 1) -> tuple[list[float], dict[str, LoRALinear]]:
    """Optimise the adapter (and LoRA) of an :class:`~emosh.generate.pipeline.EmoshPipeline` in place.

    Returns the per-step losses and the LoRA layers now inside the DiT (empty without ``lora_rank``).
    """
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=pipeline.device.type == "cpu")
    transformer, vae, adapter = pipeline.transformer, pipeline.vae, pipeline.adapter
    transformer.requires_grad_(False)
    vae.requires_grad_(False)
    params = list(adapter.parameters())
    lora = add_lora(transformer, lora_rank, lora_alpha) if lora_rank > 0 else {}
    for layer in lora.values():
        params += [layer.lora_a, layer.lora_b]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr)
    adapter, optimizer = accelerator.prepare(adapter, optimizer)
    pipeline.adapter = accelerator.unwrap_model(adapter)  # the hook calls the adapter module itself
    generator = torch.Generator("cpu").manual_seed(seed)
    if text is None:
        text = torch.zeros(1, 8, transformer.config.text_dim)
    text = text.to(pipeline.device, transformer.dtype)
    losses = []
    transformer.train()
    for step in range(steps):
        sample = next(samples)
        with torch.no_grad():
            video_latents = pipeline.encode_video(sample.video)
            motion_latents = pipeline.encode_video(sample.control)
            ref_index = int(torch.randint(sample.video.shape[0], (1,), generator=generator))
            reference_latent = pipeline.encode_video(sample.video[ref_index:ref_index + 1])
        use_temporal = temporal_frames if torch.rand(1, generator=generator).item() < 0.5 else 0
        use_temporal = min(use_temporal, video_latents.shape[2] - 1)
        with accelerator.autocast():
            loss = flow_matching_loss(pipeline, video_latents, reference_latent, motion_latents, text, use_temporal,
                                      generator)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        if log_every and step % log_every == 0:
            accelerator.print(json.dumps({"step": step, "loss": losses[-1]}))
    transformer.eval()
    return losses, lora


def save_lora(lora: dict[str, LoRALinear], path: str | Path) -> None:
    """LoRA weights as safetensors (``<module>.lora_a`` / ``.lora_b``, scale in the header)."""
    tensors = {}
    for name, layer in lora.items():
        tensors[f"{name}.lora_a"] = layer.lora_a.detach().cpu().contiguous()
        tensors[f"{name}.lora_b"] = layer.lora_b.detach().cpu().contiguous()
    scale = next(iter(lora.values())).scale if lora else 1.0
    save_file(tensors, str(path), metadata={"format": "emosh-lora", "scale": str(scale)})


def load_lora(transformer: torch.nn.Module, path: str | Path) -> dict[str, LoRALinear]:
    """Attach LoRA weights written by :func:`save_lora` to a DiT (for inference with the diffusers host)."""
    tensors, metadata = read_safetensors(path)
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    scale = float(metadata.get("scale", 1.0))
    layers = {}
    for name in names:
        a, b = tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"]
        parent_name, _, child = name.rpartition(".")
        base = transformer.get_submodule(name)
        layer = LoRALinear(base, a.shape[0], scale * a.shape[0]).to(base.weight.device)
        with torch.no_grad():
            layer.lora_a.copy_(a)
            layer.lora_b.copy_(b)
        setattr(transformer.get_submodule(parent_name), child, layer)
        layers[name] = layer
    return layers


def _sample_stream(pairs: list[tuple[Path, Path]], frames: int, size: tuple[int, int], seed: int) -> Iterator[Sample]:
    rng = random.Random(seed)
    while True:
        video, control = rng.choice(pairs)
        yield load_clip(video, control, frames, size, rng)


def main(argv: list[str] | None = None) -> int:
    from .generate.pipeline import EmoshPipeline

    parser = argparse.ArgumentParser(prog="python -m emosh.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="diffusers Wan folder or transformer .safetensors")
    parser.add_argument("--vae", help="Wan VAE folder or .safetensors (default: inside --model)")
    parser.add_argument("--data", required=True, type=Path, help="folder of <name>.mp4 + <name>.control.mp4 pairs")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder: emosh_adapter/ (a diffusers model folder) and emosh_lora.safetensors")
    parser.add_argument("--adapter", help="adapter folder (or a file in it) to continue from (default: zeros)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--frames", type=int, default=33, help="pixel frames per training clip (4k+1)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--temporal-frames", type=int, default=1, help="latent frames used as temporal conditioning")
    parser.add_argument("--lora-rank", type=int, default=0, help="> 0 also trains LoRA on the DiT attention")
    parser.add_argument("--lora-alpha", type=float, default=1.0)
    parser.add_argument("--text-embeds", help="safetensors with 'prompt_embeds' [1, L, text_dim] (default zeros)")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pipe = EmoshPipeline.from_pretrained(args.model, vae=args.vae, adapter=args.adapter, device=args.device) \
        if args.adapter else _pipeline_with_new_adapter(args.model, args.vae, args.device)
    text = read_safetensors(args.text_embeds)[0]["prompt_embeds"] if args.text_embeds else None
    stream = _sample_stream(find_pairs(args.data), args.frames, (args.height, args.width), args.seed)
    losses, lora = train(pipe, stream, args.steps, args.lr, args.lora_rank, args.lora_alpha, args.temporal_frames,
                         text, args.seed, args.mixed_precision)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe.adapter.save_pretrained(args.out / "emosh_adapter")
    if lora:
        save_lora(lora, args.out / "emosh_lora.safetensors")
    print(json.dumps({"steps": len(losses), "final_loss": losses[-1], "out": str(args.out)}))
    return 0


def _pipeline_with_new_adapter(model: str, vae: str | None, device: str):
    """A pipeline with a zero-initialised adapter (Wan-Animate: its own pose_patch_embedding is trained)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from .generate.loaders import load_transformer, load_vae
    from .generate.pipeline import EmoshPipeline

    transformer = load_transformer(model).to(device)
    vae_model = load_vae(vae or model).to(device)
    embed = transformer.patch_embedding
    adapter = None if hasattr(transformer, "pose_patch_embedding") else MotionAdapter(
        embed.out_channels, tuple(embed.kernel_size), vae_model.config.z_dim).to(device)
    return EmoshPipeline(transformer, vae_model, FlowMatchEulerDiscreteScheduler(), adapter)


if __name__ == "__main__":
    raise SystemExit(main())
