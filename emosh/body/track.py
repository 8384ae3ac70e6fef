"""``EHMTrack``: the typed record that crosses every stage boundary (tracker → retarget → align → render).

Shape, motion and camera are separate fields, which is what makes shape swapping a field copy.
Saved as ``.safetensors`` (tensors) + JSON metadata (backend, versions, image size, fps, labels); the round
trip is bit-exact and loading validates everything, so a file from a stranger cannot smuggle in bad data.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import InputError, TrackFormatError
from ..paths import atomic_output
from ..safeio import read_safetensors

FORMAT_VERSION = 1

# MediaPipe Holistic landmark layout stored in ``confidence`` / ``landmarks2d`` (one table for every stage).
LANDMARK_GROUPS: dict[str, tuple[int, int]] = {
    "body": (0, 33),
    "left_hand": (33, 54),
    "right_hand": (54, 75),
    "face": (75, 553),
}
NUM_LANDMARKS = 553
CONF_GATE = 0.3  # a landmark counts as seen from this confidence on (the tracker fits only those)


def seen_landmarks(landmarks, confidence, image_size: tuple[int, int]):
    """Boolean [..., N]: landmarks detected confidently and inside the image (MediaPipe also guesses off-screen body
    points, which nothing should trust). ``landmarks`` [..., N, 2] px; numpy arrays or tensors alike."""
    h, w = image_size
    x, y = landmarks[..., 0], landmarks[..., 1]
    return (confidence >= CONF_GATE) & (x >= 0) & (x < w) & (y >= 0) & (y < h)

_PER_FRAME = ("pose", "global_orient", "translation", "expression", "focal", "cam_R", "cam_t", "confidence",
              "detected")
_OPTIONAL = ("landmarks2d",)


@dataclass
class EHMTrack:
    """One person over T frames.

    backend/backend_version: body model that interprets ``shape``/``pose``/``expression`` (see emosh.body.model).
    shape [S]; pose [T, J, 3] axis-angle; global_orient [T, 3]; translation [T, 3] (m); expression [T, E];
    focal [T] (px); cam_R [T, 3, 3]; cam_t [T, 3]: pinhole camera, principal point at the image centre;
    confidence [T, 553] detection confidence per MediaPipe landmark (0 = not seen);
    detected [T] bool: False where the frame was filled by interpolation;
    landmarks2d [T, 553, 2] optional raw detections in pixels (zeros where unseen);
    image_size (height, width) in pixels; fps.
    """

    backend: str
    backend_version: str
    shape: torch.Tensor
    pose: torch.Tensor
    global_orient: torch.Tensor
    translation: torch.Tensor
    expression: torch.Tensor
    focal: torch.Tensor
    cam_R: torch.Tensor
    cam_t: torch.Tensor
    confidence: torch.Tensor
    detected: torch.Tensor
    image_size: tuple[int, int]
    fps: float = 25.0
    landmarks2d: torch.Tensor | None = None
    meta: dict[str, str] = field(default_factory=dict)  # free-form provenance (source file, settings)

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.fps = float(self.fps)
        self.validate()

    @property
    def num_frames(self) -> int:
        return int(self.pose.shape[0])

    @property
    def device(self) -> torch.device:
        return self.pose.device

    def replace(self, **changes) -> "EHMTrack":
        """A new, validated track with some fields changed (tracks are treated as immutable values)."""
        return dataclasses.replace(self, **changes)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {name: getattr(self, name) for name in ("shape",) + _PER_FRAME}
        if self.landmarks2d is not None:
            out["landmarks2d"] = self.landmarks2d
        return out

    def to(self, device: str | torch.device) -> "EHMTrack":
        return self.replace(**{k: v.to(device) for k, v in self.tensors().items()})

    def frames(self, start: int, stop: int | None = None, step: int = 1) -> "EHMTrack":
        """Frame slice [start:stop:step] (shape and metadata kept)."""
        sl = slice(start, stop, step)
        changes = {k: v[sl] for k, v in self.tensors().items() if k != "shape"}
        if step != 1:
            changes["fps"] = self.fps / step
        return self.replace(**changes)

    def motion(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for ``BodyModel.forward`` (everything but the shape)."""
        return dict(pose=self.pose, global_orient=self.global_orient, translation=self.translation,
                    expression=self.expression)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise TrackFormatError naming the first field with a wrong type, shape, dtype or value."""
        tensors = {name: getattr(self, name) for name in ("shape",) + _PER_FRAME + _OPTIONAL}
        for name, value in tensors.items():
            if value is None and name in _OPTIONAL:
                continue
            if not isinstance(value, torch.Tensor):
                raise TrackFormatError(f"EHMTrack.{name} must be a torch.Tensor, got {type(value).__name__}")
            expected_dtype = torch.bool if name == "detected" else torch.float32
            if value.dtype != expected_dtype:
                raise TrackFormatError(f"EHMTrack.{name} must be {expected_dtype}, got {value.dtype}")
            if value.dtype.is_floating_point and not torch.isfinite(value).all():
                raise TrackFormatError(f"EHMTrack.{name} contains NaN or Inf values")
        t = self.pose.shape[0] if self.pose.dim() == 3 else -1
        if t < 1:
            raise TrackFormatError(f"EHMTrack.pose must be [T, J, 3] with T >= 1, got {tuple(self.pose.shape)}")
        expected = {
            "shape": (None,),
            "pose": (t, None, 3),
            "global_orient": (t, 3),
            "translation": (t, 3),
            "expression": (t, None),
            "focal": (t,),
            "cam_R": (t, 3, 3),
            "cam_t": (t, 3),
            "confidence": (t, NUM_LANDMARKS),
            "detected": (t,),
            "landmarks2d": (t, NUM_LANDMARKS, 2),
        }
        for name, dims in expected.items():
            value = tensors[name]
            if value is None:
                continue
            ok = value.dim() == len(dims) and all(d is None or d == s for d, s in zip(dims, value.shape))
            if not ok:
                pretty = "[" + ", ".join("*" if d is None else str(d) for d in dims) + "]"
                raise TrackFormatError(f"EHMTrack.{name} must have shape {pretty} (T={t}), got {tuple(value.shape)}")
        if (self.focal <= 0).any():
            raise TrackFormatError("EHMTrack.focal must be positive")
        if min(self.image_size) < 1:
            raise TrackFormatError(f"EHMTrack.image_size must be positive (height, width), got {self.image_size}")
        if not self.fps > 0:
            raise TrackFormatError(f"EHMTrack.fps must be positive, got {self.fps}")

    def check_backend(self, backend: str) -> None:
        """Refuse a track made for another body model (its numbers would mean something else)."""
        if self.backend != backend:
            raise TrackFormatError(
                f"Track was made with the {self.backend!r} body model but the {backend!r} model was given; "
                f"load the matching body model or re-track the video.")

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` atomically (temporary name, then rename) so a cancel never leaves half a file."""
        path = Path(path)
        metadata = {
            "format": "emosh.EHMTrack",
            "format_version": str(FORMAT_VERSION),
            "backend": self.backend,
            "backend_version": self.backend_version,
            "image_size": json.dumps(list(self.image_size)),
            "fps": repr(self.fps),
            "meta": json.dumps(self.meta),
        }
        with atomic_output(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.tensors().items()}, str(tmp),
                      metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "EHMTrack":
        path = Path(path)
        if not path.is_file():
            raise TrackFormatError(f"Track file not found: {path}")
        try:
            tensors, metadata = read_safetensors(path, device)
        except InputError as exc:
            raise TrackFormatError(f"{path} is not a readable .safetensors track file ({exc.__cause__})") from exc
        if metadata.get("format") != "emosh.EHMTrack":
            raise TrackFormatError(f"{path} is a safetensors file but not an EMOSH track (no 'emosh.EHMTrack' tag)")
        version = int(metadata.get("format_version", "0"))
        if version > FORMAT_VERSION:
            raise TrackFormatError(
                f"{path} uses track format version {version}, newer than this EMOSH ({FORMAT_VERSION}); "
                f"update the EMOSH pack to read it.")
        missing = [k for k in ("shape",) + _PER_FRAME if k not in tensors]
        if missing:
            raise TrackFormatError(f"{path} is missing track fields {missing}")
        unknown = set(tensors) - set(("shape",) + _PER_FRAME + _OPTIONAL)
        if unknown:
            raise TrackFormatError(f"{path} has unknown track fields {sorted(unknown)}")
        try:
            image_size = tuple(json.loads(metadata["image_size"]))
            fps = float(metadata["fps"])
            meta = json.loads(metadata.get("meta", "{}"))
        except (KeyError, ValueError, TypeError) as exc:
            raise TrackFormatError(f"{path} has invalid track metadata ({exc})") from exc
        return cls(backend=metadata.get("backend", "?"), backend_version=metadata.get("backend_version", "?"),
                   image_size=image_size, fps=fps, meta=meta, **tensors)
