"""``python -m emosh track INPUT --out TRACK.safetensors [--overlay PATH]``: image or video → EHMTrack."""
from __future__ import annotations

import argparse
import sys
import time

from ..body import BACKENDS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("track", help="track a person in an image or video into an EHMTrack (.safetensors)",
                              description=__doc__)
    p.add_argument("input", help="image (reference mode) or video file")
    p.add_argument("--out", required=True, help="output track, .safetensors")
    p.add_argument("--overlay", default=None, help="also write the fitted mesh over the input: .png montage or .mp4")
    p.add_argument("--start", type=int, default=0, help="first video frame")
    p.add_argument("--max-frames", type=int, default=None, help="track at most this many frames")
    p.add_argument("--reference", action="store_true",
                   help="reference mode (single frame, more iterations, body shape fitted); default for images")
    p.add_argument("--long-side", type=int, default=None, help="resize frames so the longer side has this many px")
    p.add_argument("--focal", type=float, default=None, help="focal length in px (default: 50° field of view)")
    p.add_argument("--iterations", type=int, default=None, help="optimiser steps per window")
    p.add_argument("--smoothing", type=float, default=1.0, help="scale of the temporal smoothing (0 = none)")
    p.add_argument("--backend", default="auto", help="detector backend: auto, holistic or tasks")
    p.add_argument("--model-dir", default=None, help="folder with the MediaPipe .task files (tasks backend)")
    p.add_argument("--body", default="anny", choices=BACKENDS,
                   help="body model to fit: anny (ships with its package) or smplx_flame (your licensed files)")
    p.add_argument("--body-dir", action="append", default=[],
                   help="folder whose body/ subfolder holds the SMPL-X + FLAME files (repeatable)")
    p.add_argument("--device", default="cpu", help="torch device for the fit (cpu, cuda, ...)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    from ..body import load_body_model
    from ..video import is_image, iter_frames, read_image, resize_long_side
    from .overlay import write_overlay
    from .tracker import reprojection_error_pct, track_file

    start = time.perf_counter()
    model = load_body_model(args.body, args.device, args.body_dir)
    reference = True if args.reference else None
    done = [0]

    def progress(n: int) -> None:
        done[0] = n
        if n % 50 == 0:
            print(f"tracked {n} frames", file=sys.stderr, flush=True)

    track = track_file(args.input, model, start=args.start, max_frames=args.max_frames, reference=reference,
                       long_side=args.long_side, focal=args.focal, iterations=args.iterations,
                       smoothing=args.smoothing, backend=args.backend, model_dir=args.model_dir, progress=progress)
    track.save(args.out)
    seconds = time.perf_counter() - start
    summary = {"frames": track.num_frames, "detected_ratio": round(float(track.detected.float().mean()), 4),
               "reproj_err_pct": round(reprojection_error_pct(track, model), 3), "seconds": round(seconds, 2),
               "out": str(args.out)}
    if args.overlay:
        resize = (lambda f: f) if not args.long_side else (lambda f: resize_long_side(f, args.long_side))  # noqa
        frames = ([resize(read_image(args.input))] if is_image(args.input)
                  else (resize(f) for f in iter_frames(args.input, start=args.start, max_frames=track.num_frames)))
        summary["overlay"] = str(write_overlay(args.overlay, frames, track, model))
    return summary
