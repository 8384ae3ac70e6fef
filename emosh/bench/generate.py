"""``python -m emosh.bench generate --json``: cost of EMOSH injection and memory of chunked sampling.

* ``injection_overhead`` = (adapter patch embedding + motion-token add + chunk conditioning assembly + chunk
  blending) time ÷ one base transformer forward on the same chunk (target ≤ 0.03).
* ``peak_mem_ratio`` = peak memory while sampling a 4-chunk video ÷ a 1-chunk video, each in a fresh process
  (target ≤ 1.1): the sampler must not hold anything per chunk.

Random weights, a Wan-style DiT of ``--dim`` width and ``--layers`` blocks. The default spatial size is 30×52 latent
(240×416 px), half the 60×104 of the issue, because one 60×104×21 forward takes ~150 s on 2 CPU cores; pass
``--height 60 --width 104`` for the full size.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from .common import emit, median_ms, peak_rss_mb

TEXT_DIM = 512


def _transformer(dim: int, layers: int, device: str):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    heads = max(1, dim // 128)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=dim // heads,
                                 in_channels=16, out_channels=16, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=4 * dim,
                                 num_layers=layers).eval().to(device)


def _pipeline(dim: int, layers: int, device: str):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler

    from ..generate.adapter import MotionAdapter
    from ..generate.pipeline import EmoshPipeline

    adapter = MotionAdapter(dim)
    torch.nn.init.normal_(adapter.proj.weight, std=0.02)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)  # only z_dim is used
    return EmoshPipeline(_transformer(dim, layers, device), vae.to(device), FlowMatchEulerDiscreteScheduler(shift=3.0),
                         adapter.to(device))


def measure_overhead(args: argparse.Namespace) -> dict:
    """Median times of the base forward and of everything EMOSH adds around it, on one later chunk."""
    from ..generate.adapter import add_motion_tokens
    from ..generate.chunks import ChunkAssembler, plan_chunks

    pipe = _pipeline(args.dim, args.layers, args.device)
    frames, h, w = args.frames, args.height, args.width
    chunks = plan_chunks(2 * frames - args.overlap, frames, args.overlap)
    assembler = ChunkAssembler(chunks, torch.randn(1, 16, 1, h, w, device=args.device), temporal_frames=1)
    assembler.add(chunks[0], torch.randn(1, 16, frames, h, w, device=args.device))
    chunk = chunks[1]
    noisy = torch.randn(1, 16, chunk.length, h, w, device=args.device)
    motion = torch.randn(1, 16, chunk.length, h, w, device=args.device)
    text = torch.randn(1, 16, TEXT_DIM, device=args.device)
    model_in = assembler.conditioning(chunk).prepend(noisy, 16)
    first = model_in.shape[2] - chunk.length
    with torch.no_grad():
        embedded = pipe.transformer.patch_embedding(model_in)

        def base() -> None:
            pipe.transformer(model_in, timestep=torch.tensor([500.0], device=args.device),
                             encoder_hidden_states=text, return_dict=False)

        def emosh_parts() -> None:
            cond = assembler.conditioning(chunk)
            cond.prepend(noisy, 16)
            add_motion_tokens(embedded, pipe.adapter(motion), first, 1.0)
            assembler.add(chunk, noisy)  # repeated adds only accumulate into chunk 1's frames; timing is what counts

        base_ms = median_ms(base, runs=args.runs, warmup=1)
        emosh_ms = median_ms(emosh_parts, runs=max(5, args.runs), warmup=1)
    return {"base_forward_ms": round(base_ms, 1), "injection_ms": round(emosh_ms, 2),
            "injection_overhead": round(emosh_ms / base_ms, 4), "tokens": int(embedded[0, 0].numel())}


def sample_worker(args: argparse.Namespace) -> dict:
    """Sample a video of ``args.chunks`` chunks in this process; report its peak memory."""
    from ..generate.chunks import plan_chunks

    pipe = _pipeline(args.dim, args.layers, args.device)
    frames = args.chunks * args.frames - (args.chunks - 1) * args.overlap
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    motion = torch.randn(1, 16, frames, args.height, args.width)
    pipe.sample_latents(motion, torch.randn(1, 16, 1, args.height, args.width), torch.randn(1, 16, TEXT_DIM),
                        num_inference_steps=args.steps, guidance_scale=1.0, chunk_frames=4 * (args.frames - 1) + 1,
                        overlap_frames=4 * args.overlap, temporal_frames=1)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else peak_rss_mb())
    return {"chunks": len(plan_chunks(frames, args.frames, args.overlap)), "latent_frames": frames,
            "peak_mb": round(peak, 1)}


def _run_worker(args: argparse.Namespace, chunks: int) -> dict:
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    argv = ["--worker", "--chunks", str(chunks), "--dim", str(args.dim), "--layers", str(args.layers),
            "--frames", str(args.frames), "--overlap", str(args.overlap), "--height", str(args.height),
            "--width", str(args.width), "--steps", str(args.steps), "--device", args.device]
    code = f"from emosh.bench.generate import main; main({argv!r})"
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m emosh.bench generate")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--frames", type=int, default=21, help="latent frames per chunk")
    parser.add_argument("--overlap", type=int, default=2, help="latent frames shared by consecutive chunks")
    parser.add_argument("--height", type=int, default=30, help="latent height")
    parser.add_argument("--width", type=int, default=52, help="latent width")
    parser.add_argument("--steps", type=int, default=1, help="sampling steps per chunk in the memory runs")
    parser.add_argument("--runs", type=int, default=2, help="timed base forwards")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunks", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        emit(sample_worker(args))
        return 0
    result = {"device": args.device, "threads": torch.get_num_threads(), "dim": args.dim, "layers": args.layers,
              "latent_chunk": [args.frames, args.height, args.width]}
    result.update(measure_overhead(args))
    one, four = _run_worker(args, 1), _run_worker(args, 4)
    result.update({"peak_mb_1_chunk": one["peak_mb"], "peak_mb_4_chunks": four["peak_mb"],
                   "chunks_measured": [one["chunks"], four["chunks"]],
                   "peak_mem_ratio": round(four["peak_mb"] / one["peak_mb"], 4),
                   "target_injection_overhead": 0.03, "target_peak_mem_ratio": 1.1})
    if not args.json:
        print(__doc__)
    emit(result)
    return 0
