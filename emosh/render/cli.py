"""``python -m emosh retarget`` (shape swap + align) and ``python -m emosh render`` (control videos)."""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from ..errors import InputError
from .draw import KEYPOINT_STYLES
from .renderer import MODES


def register(subparsers) -> None:
    r = subparsers.add_parser("retarget", help="driver's motion on the reference person's body shape",
                              description="Shape swap: motion and camera from the driving track, body shape from the "
                                          "reference track; optionally placed where the reference person stands.")
    r.add_argument("--driving", required=True, help="driving video's track (.safetensors)")
    r.add_argument("--reference", required=True, help="reference image's track (.safetensors)")
    r.add_argument("--out", required=True, help="output track (.safetensors)")
    r.add_argument("--shape", choices=("reference", "driver", "blend"), default="reference",
                   help="whose body shape (default: reference)")
    r.add_argument("--blend", type=float, default=0.5, help="with --shape blend: 0 = driver .. 1 = reference")
    r.add_argument("--expression-strength", type=float, default=1.0, help="0 neutral face, 1 as tracked, >1 more")
    r.add_argument("--hand-strength", type=float, default=1.0, help="0 relaxed hands, 1 as tracked")
    r.add_argument("--parts", default="body,hands,face,eyes",
                   help="comma list of driver motion parts to use (others rest): body,hands,face,eyes")
    r.add_argument("--no-scale-trajectory", action="store_true", help="keep the driver's root travel unscaled")
    r.add_argument("--no-keep-ground", action="store_true", help="do not match the driver's ground line")
    r.add_argument("--camera-keys", default="",
                   help="zoom/pan keyframes 'frame zoom [pan_x [pan_y]]' separated by ';' (e.g. '0 1; 60 1.5 0.1')")
    r.add_argument("--align-image", help="reference image: also place the person where they stand in it")
    r.add_argument("--width", type=int, help="with --align-image: output width (default: reference image width)")
    r.add_argument("--height", type=int, help="with --align-image: output height")
    r.add_argument("--anchor", type=int, default=0, help="with --align-image: frame aligned to the reference")
    r.add_argument("--keep-driver-orientation", action="store_true",
                   help="with --align-image: keep the driver's view of the body instead of turning it to face the "
                        "camera like the reference at the anchor frame")
    r.add_argument("--driver-unseen-limbs", action="store_true",
                   help="keep the tracker's guess for limbs the driver does not show (default: the reference's pose)")
    r.add_argument("--aligned-image-out", help="with --align-image: write the aligned reference image here (PNG)")
    r.add_argument("--device", default="cpu")
    r.set_defaults(func=run_retarget)

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
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run_render)


def run_retarget(args: argparse.Namespace) -> int:
    from ..body import EHMTrack, load_body_model
    from ..cli import emit_summary
    from ..edit import parse_camera_keys
    from ..retarget import RetargetOptions, retarget

    driving = EHMTrack.load(args.driving, args.device)
    reference = EHMTrack.load(args.reference, args.device)
    model = load_body_model(driving.backend, args.device)
    options = RetargetOptions(shape=args.shape, blend=args.blend, expression_strength=args.expression_strength,
                              hand_strength=args.hand_strength,
                              parts=tuple(p.strip() for p in args.parts.split(",") if p.strip()),
                              scale_trajectory=not args.no_scale_trajectory, keep_ground=not args.no_keep_ground,
                              camera_keys=parse_camera_keys(args.camera_keys.replace(";", "\n")),
                              unseen_limbs_from_reference=not args.driver_unseen_limbs)
    out = retarget(model, driving, reference, options)
    summary = {"frames": out.num_frames, "out": str(args.out), "shape": options.shape}
    if args.align_image:
        from ..align import spatial_align
        from ..video import read_image, write_image

        image = read_image(args.align_image)
        height = args.height or image.shape[0]
        width = args.width or image.shape[1]
        aligned = spatial_align(model, image, reference, out, width=width, height=height, anchor=args.anchor,
                                match_orientation=not args.keep_driver_orientation)
        out = aligned.track
        summary.update(width=width, height=height, anchor=args.anchor)
        if args.aligned_image_out:
            write_image(args.aligned_image_out, aligned.reference_image)
            summary["aligned_image"] = str(args.aligned_image_out)
    elif args.width or args.height:
        raise InputError("--width/--height need --align-image (the render command resizes plain tracks)")
    out.save(args.out)
    emit_summary(summary)
    return 0


def run_render(args: argparse.Namespace) -> int:
    from ..body import EHMTrack, load_body_model
    from ..cli import emit_summary
    from ..video import VideoWriter, write_image
    from .renderer import render_track
    from .scail import scail_size

    for name in ("width", "height", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    track = EHMTrack.load(args.track, args.device)
    model = load_body_model(track.backend, args.device)
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
    emit_summary({"frames": frames, "mode": args.mode, "out": str(out)})
    return 0
