"""``python -m emosh render TRACK --out OUT``: a track as control video(s), streamed to an .mp4 or PNG folder."""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from ..errors import InputError
from .draw import KEYPOINT_STYLES
from .renderer import MODES


def register(subparsers) -> None:
    p = subparsers.add_parser("render", help="render a track as control video(s)",
                              description="Hybrid EMOSH control (semantic mesh + keypoints), keypoints only, "
                                          "normal, depth, mask or part maps, or SCAIL-Preview capsules, streamed "
                                          "to an .mp4 or PNG folder.")
    p.add_argument("track", help="track .safetensors")
    p.add_argument("--mode", choices=MODES, default="hybrid")
    p.add_argument("--keypoint-style", choices=KEYPOINT_STYLES, default="wan_animate",
                   help="drawing of --mode keypoints")
    p.add_argument("--peer-pipeline", action="store_true",
                   help="with --keypoint-style unianimate: make the frames as UniAnimate makes its own (stretch "
                        "onto its 512x768 canvas, JPEG quality 95, bilinear resize) instead of lossless, aligned "
                        "frames")
    p.add_argument("--width", type=int, help="output width (default: the track's; scail: SCAIL's 512x896 or "
                                             "896x512); other sizes cover + crop")
    p.add_argument("--height", type=int, help="output height")
    p.add_argument("--out", required=True, help=".mp4 file, or a folder for numbered PNGs")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--body-dir", action="append", default=[],
                   help="folder whose body/ subfolder holds the SMPL-X + FLAME files, for smplx_flame tracks")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run_render)


def run_render(args: argparse.Namespace) -> dict:
    from ..body import EHMTrack, load_body_model
    from ..video import VideoWriter, write_image
    from .renderer import render_track
    from .scail import scail_size

    for name in ("width", "height", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    track = EHMTrack.load(args.track, args.device)
    model = load_body_model(track.backend, args.device, args.body_dir)
    if args.mode == "scail" and args.width is None and args.height is None:
        args.height, args.width = scail_size(track.image_size)
    out = Path(args.out)
    to_video = out.suffix.lower() == ".mp4"
    frames = 0
    with (VideoWriter(out, track.fps) if to_video else contextlib.nullcontext()) as writer:
        for batch in render_track(model, track, (args.mode,), width=args.width, height=args.height,
                                  batch_size=args.batch_size, device=args.device,
                                  keypoint_style=args.keypoint_style, as_uint8=True,
                                  peer_pipeline=args.peer_pipeline):
            images = batch.frames[args.mode]
            if images.dim() == 3:  # mask
                images = images[..., None].expand(*images.shape, 3)
            for i, image in enumerate(images.cpu().numpy()):
                if writer is not None:
                    writer.write(image)
                else:
                    write_image(out / f"{batch.start + i:06d}.png", image)
            frames += images.shape[0]
    return {"frames": frames, "mode": args.mode, "out": str(out)}
