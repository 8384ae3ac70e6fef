"""``python -m emosh.bench animate --json``: the main job (preview animator) end to end, time and memory.

Runs ``animate`` on ../shared/data/real (fullbody_dance.mp4 driving ref_fullbody_b.jpg; the PyPI demo media when
absent) for 150 frames at 512 px, then on the video looped to 600 frames. Each run is a separate process so its peak
RSS is its own. Targets on a 2-core CPU: 150 frames in <= 60 s, peak_rss_mb <= 4000,
peak_rss_mb_600 <= 1.3 x peak_rss_mb.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import emit, peak_rss_mb

SHARED_REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"


def default_inputs() -> tuple[Path, Path, str]:
    reference, driving = SHARED_REAL / "ref_fullbody_b.jpg", SHARED_REAL / "fullbody_dance.mp4"
    if reference.is_file() and driving.is_file():
        return reference, driving, "shared/real"
    from ..commands import demo_inputs

    reference, driving = demo_inputs()
    return reference, driving, "pypi-demo"


def loop_video(source: Path, frames: int, out: Path) -> Path:
    """``source`` repeated until it has ``frames`` frames (streamed: one frame in memory at a time)."""
    from ..video import VideoWriter, iter_frames, probe_video

    written = 0
    with VideoWriter(out, probe_video(source).fps) as writer:
        while written < frames:
            for frame in iter_frames(source, max_frames=frames - written):
                writer.write(frame)
                written += 1
    return out


def run_once(reference: Path, driving: Path, frames: int, size: int, out: Path) -> dict:
    """One animate run in this process; its numbers as a dict."""
    from ..animate import AnimateOptions, animate

    begin, cpu_begin = time.perf_counter(), _cpu_seconds()
    result = animate(reference, driving, out, AnimateOptions(max_frames=frames, long_side=size))
    seconds = time.perf_counter() - begin
    return {"frames": result.frames, "seconds": round(seconds, 2), "fps": round(result.frames / seconds, 3),
            "cpu_seconds": round(_cpu_seconds() - cpu_begin, 2),  # all threads; wall time suffers on a busy box
            "peak_rss_mb": round(peak_rss_mb(), 1), "height": result.size[0], "width": result.size[1],
            "stages": {k: round(v, 2) for k, v in result.seconds.items()}}


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_child(reference: Path, driving: Path, frames: int, size: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "emosh.bench", "animate", "--child", "--reference", str(reference), "--driving",
           str(driving), "--frames", str(frames), "--size", str(size), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": _repo_path()})
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _repo_path() -> str:
    repo = str(Path(__file__).resolve().parents[2])
    existing = os.environ.get("PYTHONPATH")
    return repo if not existing else f"{repo}{os.pathsep}{existing}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m emosh.bench animate")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--long-frames", type=int, default=600, help="frames of the looped run (0 to skip)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--reference", type=Path)
    parser.add_argument("--driving", type=Path)
    parser.add_argument("--out", type=Path, help="(with --child) output video")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        emit(run_once(args.reference, args.driving, args.frames, args.size, args.out))
        return 0

    reference, driving, source = default_inputs()
    if args.reference or args.driving:
        reference, driving, source = args.reference or reference, args.driving or driving, "given"
    result = {"inputs": source, "reference": reference.name, "driving": driving.name, "size": args.size,
              "load_1m_before": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="emosh-bench-") as tmp:
        tmp = Path(tmp)
        result.update(run_child(reference, driving, args.frames, args.size, tmp / "out.mp4"))
        if args.long_frames:
            looped = loop_video(driving, args.long_frames, tmp / "looped.mp4")
            long = run_child(reference, looped, args.long_frames, args.size, tmp / "out_long.mp4")
            result.update({f"frames_{args.long_frames}": long["frames"],
                           f"cpu_seconds_{args.long_frames}": long["cpu_seconds"],
                           f"seconds_{args.long_frames}": long["seconds"],
                           f"peak_rss_mb_{args.long_frames}": long["peak_rss_mb"],
                           f"stages_{args.long_frames}": long["stages"]})
    result["load_1m_after"] = round(os.getloadavg()[0], 2)
    result["targets"] = {"seconds_150_frames_512px": 60, "peak_rss_mb": 4000, "peak_rss_ratio_600": 1.3}
    if args.long_frames:
        result["peak_rss_ratio"] = round(result[f"peak_rss_mb_{args.long_frames}"] / result["peak_rss_mb"], 3)
    emit(result)
    return 0
