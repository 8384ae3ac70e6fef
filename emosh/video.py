"""Image and video IO (PyAV for video, OpenCV for stills), streaming so long videos run in bounded memory.

Frames are RGB ``uint8`` numpy arrays [H, W, 3]. Writers go to a temporary name and are renamed at the end, so a
cancelled or failed run never leaves a half-written file under the real name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import cv2
import numpy as np

from .errors import InputError
from .paths import atomic_output, partial_path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass
class VideoInfo:
    frames: int  # container's frame count (0 when the container does not say)
    fps: float
    size: tuple[int, int]  # (height, width)


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | os.PathLike) -> np.ndarray:
    """RGB uint8 [H, W, 3]; grayscale and RGBA inputs are converted (alpha composited over white)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Image not found: {path}; check the file name and folder")
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise InputError(f"Cannot read {path} as an image (unsupported or corrupt file); re-save it as PNG or JPEG")
    return to_rgb(data, bgr=True)


def to_rgb(image: np.ndarray, bgr: bool = False) -> np.ndarray:
    """Any 2D/3D uint8/float image → RGB uint8 [H, W, 3] (gray replicated; alpha composited over white)."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        if not np.isfinite(img).all():
            raise InputError("Image contains NaN or Inf values; the step that produced it failed (pixels must be "
                             "finite numbers, 0..1 or 0..255)")
        scale = 255.0 if img.max() <= 1.0 else 1.0
        img = np.clip(img * scale, 0, 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise InputError(f"Expected an image [H, W] or [H, W, 1|3|4], got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        alpha = img[..., 3:4].astype(np.float32) / 255.0
        img = (img[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    if bgr:
        img = img[..., ::-1]
    return np.ascontiguousarray(img)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    path = _existing(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream (audio only?); choose a video file")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 25)
            return VideoInfo(frames=int(stream.frames or 0), fps=fps, size=(stream.height, stream.width))
    except av.error.FFmpegError as exc:
        raise InputError(_undecodable(path, exc)) from exc


def iter_frames(path: str | os.PathLike, start: int = 0, max_frames: int | None = None,
                long_side: int | None = None) -> Iterator[np.ndarray]:
    """Decode RGB frames one at a time, optionally resized so the longer side is ``long_side`` pixels."""
    path = _existing(path)
    produced = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream (audio only?); choose a video file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index < start:
                    continue
                if max_frames is not None and produced >= max_frames:
                    break
                image = frame.to_ndarray(format="rgb24")
                yield resize_long_side(image, long_side) if long_side else image
                produced += 1
    except av.error.FFmpegError as exc:
        raise InputError(_undecodable(path, exc)) from exc
    if produced == 0:
        hint = f" from frame {start}; lower the start frame" if start else "; re-export it as an .mp4 (H.264)"
        raise InputError(f"{path} contains no decodable frames{hint}")


def read_frames(path: str | os.PathLike, **kwargs) -> np.ndarray:
    """All frames of an image (1 frame) or a video as [T, H, W, 3] uint8."""
    if is_image(path):
        img = read_image(path)
        size = kwargs.get("long_side")
        return (resize_long_side(img, size) if size else img)[None]
    return np.stack(list(iter_frames(path, **kwargs)))


def resize_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    if abs(scale - 1.0) < 1e-6:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


class VideoWriter:
    """H.264 mp4 writer (``with`` block); frames are RGB uint8 [H, W, 3]. Odd sizes are padded to even."""

    def __init__(self, path: str | os.PathLike, fps: float, crf: int = 18):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = partial_path(self.path if self.path.suffix else self.path.with_suffix(".mp4"))
        self._fps = Fraction(fps).limit_denominator(1001)
        self._crf = crf
        self._container = None
        self._stream = None
        self.frames = 0

    def __enter__(self) -> "VideoWriter":
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        return self

    def write(self, frame: np.ndarray) -> None:
        frame = to_rgb(frame)
        h, w = frame.shape[:2]
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=self._fps)
            self._stream.width, self._stream.height = w + w % 2, h + h % 2
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(self._crf), "preset": "veryfast"}
        if (h + h % 2, w + w % 2) != (self._stream.height, self._stream.width):
            raise InputError(f"Frame {self.frames} is {w}x{h}, the video is {self._stream.width}x"
                             f"{self._stream.height}; all frames of a video must have one size")
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        finished = False
        try:
            if exc_type is None and self._stream is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
            self._container.close()
            finished = exc_type is None and self.frames > 0
            if finished:
                os.replace(self._tmp, self.path)
        finally:
            if not finished:  # cancelled, failed or empty: the temporary file goes, a previous result stays
                self._container.close()
                self._tmp.unlink(missing_ok=True)
        if exc_type is None and self.frames == 0:
            raise InputError(f"No frames were written to {self.path}")


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float) -> Path:
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return Path(path)


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """PNG/JPEG, written atomically."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"Cannot write image {path}: use one of {sorted(IMAGE_SUFFIXES)}")
    with atomic_output(path) as tmp:
        if not cv2.imwrite(str(tmp), to_rgb(image)[..., ::-1]):
            raise InputError(f"Cannot write image {path} (disk full or folder not writable?)")
    return path


def _undecodable(path: Path, exc: Exception) -> str:
    return (f"Cannot decode {path}: the file is truncated, corrupt or not a video ({exc}). "
            f"Re-export it as an .mp4 (H.264) or choose another file.")


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"File not found: {path}; check the file name and folder")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes); the copy or download did not finish")
    return path
