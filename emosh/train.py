"""``python -m emosh.train``: fine-tune the EMOSH motion adapter (and optionally LoRA on the DiT attention).

Training pairs are a real video and its hybrid control video rendered from the tracked, *non-retargeted* track
(see docs/generation.md, "Training data"). Each step trains one chunk of a clip exactly as the sampler runs it: the
clip is planned into chunks by :func:`~emosh.generate.chunks.plan_chunks`, a random chunk is picked, and its clean
conditioning is assembled by :class:`~emosh.generate.chunks.ChunkAssembler` from the clip's own latents (reference
= a frame from outside the clip window; for later chunks also the spatially-aligned latent and the temporal
latents). The objective is Wan's flow matching on that chunk's noisy frames.
"""
from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Iterator

import torch

from .errors import InputError
from .safeio import read_safetensors
from .generate.adapter import MotionAdapter
from .generate.chunks import (Chunk, ChunkAssembler, ChunkConditioning, pixel_to_latent_chunking, plan_chunks,
                              run_model_on_chunk)
from .generate.lora import LORA_FILENAME, LoRALinear, add_lora, kohya_key, save_lora

TRAINER_STATE = "trainer_state.pt"


@dataclass
class Sample:
    """One training clip: real frames and control frames ``[N, H, W, 3]`` in 0..1, and the reference image
    ``[1, H, W, 3]``: a frame of the same person from outside ``video`` (so the model cannot learn to copy it)."""

    video: torch.Tensor
    control: torch.Tensor
    reference: torch.Tensor


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

    frames = probe_video(path).frames  # 0 when the container does not say
    return frames if frames > 0 else len(read_frames(path))


def load_clip(video: Path, control: Path, frames: int, size: tuple[int, int], rng: random.Random) -> Sample:
    """A random ``frames``-frame window of a pair and a reference frame from outside it, resized to ``size`` (h, w).

    Only the window and the reference frame are decoded.
    """
    import torch.nn.functional as F

    from .video import read_frames

    total, control_total = _frame_count(video), _frame_count(control)
    if total != control_total:
        raise InputError(f"Frame count mismatch: {video.name} has {total} frames, {control.name} {control_total}.")
    if total <= frames:
        raise InputError(f"{video.name} has {total} frames; training clips need {frames} plus at least one more "
                         f"frame outside them for the reference image.")
    start = rng.randrange(total - frames + 1)
    outside = [i for i in range(total) if not start <= i < start + frames]
    ref_index = rng.choice(outside)

    def window(path: Path, first: int, length: int) -> torch.Tensor:
        x = torch.from_numpy(read_frames(path, start=first, max_frames=length)).float().div(255.0)
        x = F.interpolate(x.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
        return x.permute(0, 2, 3, 1)

    return Sample(window(video, start, frames), window(control, start, frames), window(video, ref_index, 1))


@dataclass
class ChunkExample:
    """One chunk of a clip as the sampler sees it: the clean conditioning before it, its clean latents ``x0``
    ``[1, C, n, h, w]`` and its motion latents (same shape)."""

    chunk: Chunk
    conditioning: ChunkConditioning
    target: torch.Tensor
    motion: torch.Tensor


def chunk_example(video_latents: torch.Tensor, motion_latents: torch.Tensor, reference_latent: torch.Tensor,
                  chunks: list[Chunk], index: int, temporal_frames: int, use_spatial_latent: bool = True
                  ) -> ChunkExample:
    """Chunk ``index`` of a clip with its conditioning assembled as :func:`~emosh.generate.chunks.denoise_in_chunks`
    does when every earlier chunk came out as the clip itself: the earlier chunks' latents are blended into a
    :class:`ChunkAssembler`, which then fills the spatially-aligned slot and the temporal latents.

    ``video_latents`` / ``motion_latents`` ``[1, C, T, h, w]``; ``reference_latent`` ``[1, C, 1, h, w]``.
    """
    assembler = ChunkAssembler(chunks, reference_latent, temporal_frames, use_spatial_latent)
    for earlier in chunks[:index]:
        assembler.add(earlier, video_latents[:, :, earlier.start:earlier.stop])
    chunk = chunks[index]
    return ChunkExample(chunk, assembler.conditioning(chunk), video_latents[:, :, chunk.start:chunk.stop],
                        motion_latents[:, :, chunk.start:chunk.stop])


class ChunkDenoiser(torch.nn.Module):
    """What is trained, as one module: the DiT (frozen, with its LoRA layers) and the motion adapter.

    ``accelerator.prepare`` wraps *this* module, and every prediction goes through its forward, so under a
    multi-process launch DDP sees the forward and all-reduces the adapter's and the LoRA's gradients.
    """

    def __init__(self, pipeline) -> None:
        super().__init__()
        self.transformer = pipeline.transformer
        self.adapter = pipeline.adapter
        self.pipeline = pipeline  # a plain object: not registered, its modules are the two above

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, text: torch.Tensor, conditioning: ChunkConditioning,
                motion: torch.Tensor) -> torch.Tensor:
        """Flow-matching velocity for ``noisy`` ``[B, C, n, h, w]`` at ``t`` ``[B]`` in 0..1 (same shape out)."""
        pipe = self.pipeline
        return run_model_on_chunk(lambda inp, mask: pipe.predict(inp, t * 1000.0, text, frame_mask=mask),
                                  pipe.model_input(noisy), pipe.latent_channels, self.transformer.patch_embedding,
                                  conditioning, self.adapter, motion, 1.0)


def flow_matching_loss(denoiser: torch.nn.Module, example: ChunkExample, text: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
    """Wan flow matching on one chunk: ``x_t = (1 - t) x0 + t noise``, the model predicts ``noise - x0``."""
    x0 = example.target
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    t = torch.rand(x0.shape[0], generator=generator).to(x0)
    xt = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * noise
    pred = denoiser(xt, t, text, example.conditioning, example.motion)
    return torch.nn.functional.mse_loss(pred.float(), (noise - x0).float())


def step_generator(seed: int, process: int, step: int) -> torch.Generator:
    """The random stream of one step of one process: a function of (seed, process, step), so a resumed run draws
    exactly what the uninterrupted run would have, and processes draw different noise."""
    return torch.Generator("cpu").manual_seed(hash((seed, process, step)) & 0x7FFFFFFFFFFFFFFF)


def save_trained(folder: Path, adapter: MotionAdapter, lora: dict[str, LoRALinear]) -> None:
    """``folder`` = ``MotionAdapter.save_pretrained`` + ``emosh_lora.safetensors``: one folder the Hybrid Motion
    Injector loads as a whole (it applies the LoRA found beside the adapter weights)."""
    adapter.save_pretrained(folder)
    if lora:
        save_lora(lora, folder / LORA_FILENAME)


def checkpoint_step(folder: str | Path) -> int:
    """The step a checkpoint folder was written after."""
    return int(torch.load(Path(folder) / TRAINER_STATE, weights_only=True)["step"])


def _save_checkpoint(folder: Path, step: int, adapter: MotionAdapter, lora: dict[str, LoRALinear],
                     optimizer: torch.optim.Optimizer) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_trained(folder, adapter, lora)
    torch.save({"step": step, "optimizer": optimizer.state_dict()}, folder / TRAINER_STATE)


def _load_checkpoint(folder: Path, adapter: MotionAdapter, lora: dict[str, LoRALinear],
                     optimizer: torch.optim.Optimizer) -> int:
    """Weights and optimizer state of a checkpoint into the live modules; returns its step."""
    trained = MotionAdapter.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    adapter.load_state_dict(trained.state_dict())
    if lora:
        tensors, _ = read_safetensors(folder / LORA_FILENAME)
        with torch.no_grad():
            for name, layer in lora.items():
                layer.lora_a.copy_(tensors[f"{kohya_key(name)}.lora_down.weight"])
                layer.lora_b.copy_(tensors[f"{kohya_key(name)}.lora_up.weight"])
    state = torch.load(folder / TRAINER_STATE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def train(pipeline, samples: Iterator[Sample], steps: int, lr: float = 1e-4, lora_rank: int = 0,
          lora_alpha: float = 1.0, temporal_frames: int = 1, chunk_frames: int = 33, overlap_frames: int = 8,
          text: torch.Tensor | None = None, seed: int = 0, mixed_precision: str = "no",
          gradient_checkpointing: bool = False, checkpoint_dir: Path | None = None, checkpoint_every: int = 0,
          resume_from: Path | None = None, cpu: bool | None = None,
          log_every: int = 1) -> tuple[list[float], dict[str, LoRALinear]]:
    """Optimise the adapter (and LoRA) of an :class:`~emosh.generate.pipeline.EmoshPipeline` in place.

    ``steps`` counts from the start of the run (a resumed run does ``steps - checkpoint step`` more);
    ``chunk_frames`` / ``overlap_frames`` are pixel frames, as in the sampler. ``mixed_precision="bf16"`` also
    stores the frozen DiT in bf16 (trained weights stay fp32). Every ``checkpoint_every`` steps the main process
    writes ``checkpoint_dir/step-NNNNNN/`` (adapter folder + LoRA + optimizer state). Returns this run's per-step
    losses and the LoRA layers now inside the DiT (empty without ``lora_rank``).
    """
    from accelerate import Accelerator

    cpu = pipeline.device.type == "cpu" if cpu is None else cpu
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    transformer, vae, adapter = pipeline.transformer, pipeline.vae, pipeline.adapter
    transformer.requires_grad_(False)
    vae.requires_grad_(False)
    if mixed_precision == "bf16":
        transformer.to(torch.bfloat16)
    adapter.float()
    lora_init = torch.Generator().manual_seed(seed)  # every launch (and every process) starts from the same LoRA
    lora = add_lora(transformer, lora_rank, lora_alpha, lora_init) if lora_rank > 0 else {}
    params = list(adapter.parameters()) + [p for layer in lora.values() for p in (layer.lora_a, layer.lora_b)]
    for p in params:
        p.requires_grad_(True)
    if gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    for module in (transformer, vae, adapter):
        module.to(accelerator.device)
    optimizer = torch.optim.AdamW(params, lr=lr)
    first_step = _load_checkpoint(Path(resume_from), adapter, lora, optimizer) if resume_from else 0
    denoiser, optimizer = accelerator.prepare(ChunkDenoiser(pipeline), optimizer)
    if text is None:
        text = torch.zeros(1, 8, transformer.config.text_dim)
    text = text.to(accelerator.device, torch.float32)
    losses = []
    transformer.train()
    for step in range(first_step, steps):
        generator = step_generator(seed, accelerator.process_index, step)
        sample = next(samples)
        with torch.no_grad():
            video_latents = pipeline.encode_video(sample.video)
            motion_latents = pipeline.encode_video(sample.control)
            reference_latent = pipeline.encode_video(sample.reference[:1])
        chunks = plan_chunks(video_latents.shape[2], *pixel_to_latent_chunking(chunk_frames, overlap_frames))
        index = int(torch.randint(len(chunks), (1,), generator=generator))
        example = chunk_example(video_latents, motion_latents, reference_latent, chunks, index, temporal_frames)
        loss = flow_matching_loss(denoiser, example, text, generator)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        if log_every and step % log_every == 0:
            accelerator.print(json.dumps({"step": step, "loss": losses[-1], "chunk": index}))
        if checkpoint_dir is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
            if accelerator.is_main_process:
                _save_checkpoint(Path(checkpoint_dir) / f"step-{step + 1:06d}", step + 1, adapter, lora,
                                 optimizer)
            accelerator.wait_for_everyone()
    transformer.eval()
    return losses, lora


def _sample_stream(pairs: list[tuple[Path, Path]], frames: int, size: tuple[int, int], seed: int, process: int,
                   first_step: int) -> Iterator[Sample]:
    """Clip of step ``s`` drawn from (seed, process, s) alone, so a resumed run sees the clips it would have seen."""
    for step in count(first_step):
        rng = random.Random(f"{seed}:{process}:{step}")
        video, control = rng.choice(pairs)
        yield load_clip(video, control, frames, size, rng)


def main(argv: list[str] | None = None) -> int:
    from accelerate import PartialState

    from .generate.pipeline import EmoshPipeline

    parser = argparse.ArgumentParser(prog="python -m emosh.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="diffusers Wan folder or transformer .safetensors")
    parser.add_argument("--vae", help="Wan VAE folder or .safetensors (default: inside --model)")
    parser.add_argument("--data", required=True, type=Path, help="folder of <name>.mp4 + <name>.control.mp4 pairs")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder: emosh_adapter/ (adapter + emosh_lora.safetensors) and checkpoints/")
    parser.add_argument("--adapter", help="adapter folder (or a file in it) to continue from (default: zeros)")
    parser.add_argument("--steps", type=int, default=1000, help="total optimiser steps (a resumed run included)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--frames", type=int, default=81, help="pixel frames per training clip (4k+1)")
    parser.add_argument("--chunk-frames", type=int, default=33, help="pixel frames per chunk, as in the sampler")
    parser.add_argument("--overlap-frames", type=int, default=8, help="pixel frames shared by consecutive chunks")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--temporal-frames", type=int, default=1, help="latent frames used as temporal conditioning")
    parser.add_argument("--lora-rank", type=int, default=0, help="> 0 also trains LoRA on the DiT attention")
    parser.add_argument("--lora-alpha", type=float, default=1.0)
    parser.add_argument("--text-embeds", help="safetensors with 'prompt_embeds' [1, L, text_dim] (default zeros)")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"],
                        help="bf16 also stores the frozen DiT in bf16")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute DiT blocks in backward")
    parser.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (0: none)")
    parser.add_argument("--resume", type=Path, help="a checkpoint folder (out/checkpoints/step-NNNNNN) to resume")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu forces CPU; otherwise accelerate places each process on its GPU")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pipe = EmoshPipeline.from_pretrained(args.model, vae=args.vae, adapter=args.adapter) \
        if args.adapter else _pipeline_with_new_adapter(args.model, args.vae)
    text = read_safetensors(args.text_embeds)[0]["prompt_embeds"] if args.text_embeds else None
    first_step = checkpoint_step(args.resume) if args.resume else 0
    stream = _sample_stream(find_pairs(args.data), args.frames, (args.height, args.width), args.seed,
                            PartialState(cpu=args.device == "cpu").process_index, first_step)
    losses, lora = train(pipe, stream, args.steps, args.lr, args.lora_rank, args.lora_alpha, args.temporal_frames,
                         args.chunk_frames, args.overlap_frames, text, args.seed, args.mixed_precision,
                         args.gradient_checkpointing, args.out / "checkpoints", args.checkpoint_every, args.resume,
                         cpu=args.device == "cpu")
    state = PartialState()
    if state.is_main_process:
        args.out.mkdir(parents=True, exist_ok=True)
        save_trained(args.out / "emosh_adapter", pipe.adapter, lora)
        print(json.dumps({"steps": first_step + len(losses), "final_loss": losses[-1] if losses else None,
                          "processes": state.num_processes, "out": str(args.out)}))
    return 0


def _pipeline_with_new_adapter(model: str, vae: str | None):
    """A pipeline on CPU with a zero-initialised adapter (Wan-Animate: its own pose_patch_embedding is trained);
    :func:`train` moves it to the process's device."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from .generate.loaders import load_transformer, load_vae
    from .generate.pipeline import EmoshPipeline

    transformer = load_transformer(model)
    vae_model = load_vae(vae or model)
    embed = transformer.patch_embedding
    adapter = None if hasattr(transformer, "pose_patch_embedding") else MotionAdapter(
        embed.out_channels, tuple(embed.kernel_size), vae_model.config.z_dim)
    return EmoshPipeline(transformer, vae_model, FlowMatchEulerDiscreteScheduler(), adapter)


if __name__ == "__main__":
    raise SystemExit(main())
