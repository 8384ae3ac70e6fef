"""``python -m emosh.bench generate --json``: what EMOSH adds to a Wan DiT forward, and activation memory per chunk.

* ``injection_overhead`` = the adapter's patch embedding + motion-token add alone ÷ one base DiT forward of the
  chunk's noisy frames (target ≤ 0.03).
* ``conditioning_overhead`` = a forward with ``[reference][spatial][temporal]`` before the noisy frames ÷ a plain
  forward of the same noisy frames, minus 1 (the price of the clean frames; 3 extra frames on ``--frames``).
* ``vae_encode_ms_per_frame``: Wan 2.1 VAE (its full architecture, random weights) encoding the control video.
* ``activation_peak_mb_1_chunk`` / ``activation_peak_mb_4_chunks``: peak resident memory while sampling, minus the
  memory held just before sampling (weights and inputs), each in a fresh process; ``activation_mem_ratio`` of the
  two (target ≤ 1.1: nothing may be held per chunk).

Random weights at Wan 2.1 1.3B's width (1536, 12 heads, ffn 8960). Forwards time ``--blocks`` blocks and scale the
block time to ``--layers`` (30 for 1.3B): ``forward ≈ outside-blocks time + layers × mean block time``. Defaults
keep the whole run under ~3 minutes on 2 CPU cores: 5 noisy latent frames of 30×52 (240×416 px) per chunk.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from .common import emit, median_ms

TEXT_DIM = 4096
WAN_1_3B = {"dim": 1536, "heads": 12, "ffn": 8960, "layers": 30}


def _transformer(dim: int, heads: int, ffn: int, blocks: int, device: str):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=dim // heads,
                                 in_channels=16, out_channels=16, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=ffn,
                                 num_layers=blocks).eval().to(device)


def _random_adapter(dim: int):
    from ..generate.adapter import MotionAdapter

    adapter = MotionAdapter(dim)
    torch.nn.init.normal_(adapter.proj.weight, std=0.02)
    return adapter


def scaled_forward_ms(transformer, model_in: torch.Tensor, text: torch.Tensor, layers: int, runs: int) -> float:
    """Median forward time with the block time scaled from ``len(transformer.blocks)`` blocks to ``layers``."""
    block_ms: list[float] = []
    starts: list[float] = []
    hooks = [b.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter())) for b in transformer.blocks]
    hooks += [b.register_forward_hook(lambda *_: block_ms.append((time.perf_counter() - starts[-1]) * 1e3))
              for b in transformer.blocks]
    t = torch.tensor([500.0], device=model_in.device)
    totals = []
    try:
        with torch.no_grad():
            transformer(model_in, timestep=t, encoder_hidden_states=text, return_dict=False)  # warm-up
            for _ in range(runs):
                block_ms.clear()
                start = time.perf_counter()
                transformer(model_in, timestep=t, encoder_hidden_states=text, return_dict=False)
                total = (time.perf_counter() - start) * 1e3
                per_block = sum(block_ms) / len(block_ms)
                totals.append(total - sum(block_ms) + layers * per_block)
    finally:
        for h in hooks:
            h.remove()
    return sorted(totals)[len(totals) // 2]


def measure_overhead(args: argparse.Namespace) -> dict:
    """Base forward of the noisy frames, the adapter's add alone, and the forward with the conditioning frames."""
    from ..generate.adapter import add_motion_tokens
    from ..generate.chunks import ChunkConditioning

    transformer = _transformer(args.dim, args.heads, args.ffn, args.blocks, args.device)
    adapter = _random_adapter(args.dim).to(args.device)
    frames, h, w = args.frames, args.height, args.width
    noisy = torch.randn(1, 16, frames, h, w, device=args.device)
    motion = torch.randn(1, 16, frames, h, w, device=args.device)
    text = torch.randn(1, 512, TEXT_DIM, device=args.device)
    cond = ChunkConditioning(torch.randn(1, 16, 3, h, w, device=args.device), 1, 1, 1)
    with torch.no_grad():
        base_ms = scaled_forward_ms(transformer, noisy, text, args.layers, args.runs)
        cond_ms = scaled_forward_ms(transformer, cond.prepend(noisy, 16), text, args.layers, args.runs)
        embedded = transformer.patch_embedding(cond.prepend(noisy, 16))
        inject_ms = median_ms(lambda: add_motion_tokens(embedded, adapter(motion), cond.num_frames, 1.0),
                              runs=max(5, args.runs), warmup=1)
    return {"base_forward_ms": round(base_ms, 1), "conditioned_forward_ms": round(cond_ms, 1),
            "injection_ms": round(inject_ms, 2), "injection_overhead": round(inject_ms / base_ms, 4),
            "conditioning_overhead": round(cond_ms / base_ms - 1.0, 4),
            "tokens_noisy": frames * (h // 2) * (w // 2)}


def measure_vae_encode(args: argparse.Namespace) -> dict:
    """Wan 2.1 VAE (default AutoencoderKLWan architecture) encoding ``--vae-frames`` control frames."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan().eval().to(args.device)
    pixels = torch.rand(1, 3, args.vae_frames, 8 * args.height, 8 * args.width, device=args.device) * 2 - 1
    with torch.no_grad():
        ms = median_ms(lambda: vae.encode(pixels).latent_dist.mode(), runs=1, warmup=0)
    return {"vae_encode_ms_per_frame": round(ms / args.vae_frames, 1),
            "vae_encode_size": [args.vae_frames, 8 * args.height, 8 * args.width]}


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _RssPeak:
    """Peak resident memory while the block runs, sampled every millisecond by a thread (Linux)."""

    def __enter__(self) -> "_RssPeak":
        self.peak, self._stop = _current_rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _current_rss_mb())

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _current_rss_mb())


def sample_worker(args: argparse.Namespace) -> dict:
    """Sample a video of ``args.chunks`` chunks in this process; report the memory sampling adds."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler

    from ..generate.chunks import plan_chunks
    from ..generate.pipeline import EmoshPipeline

    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)  # only z_dim is used
    pipe = EmoshPipeline(_transformer(args.dim, args.heads, args.ffn, args.blocks, args.device), vae.to(args.device),
                         FlowMatchEulerDiscreteScheduler(shift=3.0), _random_adapter(args.dim).to(args.device))
    frames = args.chunks * args.frames - (args.chunks - 1) * args.overlap
    motion = torch.randn(1, 16, frames, args.height, args.width)
    reference, text = torch.randn(1, 16, 1, args.height, args.width), torch.randn(1, 512, TEXT_DIM)
    sample = dict(num_inference_steps=args.steps, guidance_scale=1.0, chunk_frames=4 * (args.frames - 1) + 1,
                  overlap_frames=4 * args.overlap, temporal_frames=1)
    if args.device.startswith("cuda"):
        held = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        pipe.sample_latents(motion, reference, text, **sample)
        activation = (torch.cuda.max_memory_allocated() - held) / 2**20
    else:
        held = _current_rss_mb()
        with _RssPeak() as peak:
            pipe.sample_latents(motion, reference, text, **sample)
        activation = peak.peak - held
    return {"chunks": len(plan_chunks(frames, args.frames, args.overlap)), "latent_frames": frames,
            "activation_peak_mb": round(activation, 1)}


def _run_worker(args: argparse.Namespace, chunks: int) -> dict:
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    argv = ["--worker", "--chunks", str(chunks), "--dim", str(args.dim), "--heads", str(args.heads),
            "--ffn", str(args.ffn), "--blocks", str(args.blocks), "--frames", str(args.frames),
            "--overlap", str(args.overlap), "--height", str(args.height), "--width", str(args.width),
            "--steps", str(args.steps), "--device", args.device]
    code = f"from emosh.bench.generate import main; main({argv!r})"
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m emosh.bench generate")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--dim", type=int, default=WAN_1_3B["dim"])
    parser.add_argument("--heads", type=int, default=WAN_1_3B["heads"])
    parser.add_argument("--ffn", type=int, default=WAN_1_3B["ffn"])
    parser.add_argument("--layers", type=int, default=WAN_1_3B["layers"], help="blocks of the model timed")
    parser.add_argument("--blocks", type=int, default=2, help="blocks actually run (time scaled to --layers)")
    parser.add_argument("--frames", type=int, default=5, help="noisy latent frames per chunk")
    parser.add_argument("--overlap", type=int, default=1, help="latent frames shared by consecutive chunks")
    parser.add_argument("--height", type=int, default=30, help="latent height")
    parser.add_argument("--width", type=int, default=52, help="latent width")
    parser.add_argument("--vae-frames", type=int, default=5, help="control frames encoded by the VAE")
    parser.add_argument("--steps", type=int, default=1, help="sampling steps per chunk in the memory runs")
    parser.add_argument("--runs", type=int, default=1, help="timed forwards")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunks", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        emit(sample_worker(args))
        return 0
    result = {"device": args.device, "threads": torch.get_num_threads(), "dim": args.dim, "heads": args.heads,
              "layers_scaled_to": args.layers, "blocks_run": args.blocks,
              "latent_chunk": [args.frames, args.height, args.width]}
    result.update(measure_overhead(args))
    result.update(measure_vae_encode(args))
    one, four = _run_worker(args, 1), _run_worker(args, 4)
    result.update({"activation_peak_mb_1_chunk": one["activation_peak_mb"],
                   "activation_peak_mb_4_chunks": four["activation_peak_mb"],
                   "chunks_measured": [one["chunks"], four["chunks"]],
                   "activation_mem_ratio": round(four["activation_peak_mb"] / max(one["activation_peak_mb"], 1.0), 4),
                   "target_injection_overhead": 0.03, "target_activation_mem_ratio": 1.1})
    if not args.json:
        print(__doc__)
    emit(result)
    return 0
