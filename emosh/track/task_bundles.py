"""Build Tasks-API ``.task`` bundles from the legacy ``.tflite`` models that mediapipe 0.10.x wheels ship.

For users who have an older mediapipe (or its model files) but want the tasks backend, and for CI, which checks the
tasks backend without downloading anything. A ``.task`` file is an uncompressed, 4-byte-aligned zip of named tflite
models. The pose landmark model needs NormalizationOptions metadata (pixel/255) that the legacy file lacks; the
tasks graph refuses float inputs without it. There is no face bundle: the shipped face models do not fit the
FaceLandmarker graph, and no wheel ships ``face_blendshapes.tflite``.

Usage: ``python -m emosh.track.task_bundles OUT_DIR`` writes pose_landmarker_full.task and hand_landmarker.task.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import MissingModelError
from ..mediapipe_import import import_mediapipe
from ..paths import atomic_output
from .detect import TASK_FILES


def legacy_model_dir() -> Path:
    """``mediapipe/modules`` of the installed wheel (where 0.10.9-0.10.21 keep their .tflite files)."""
    return Path(import_mediapipe().__file__).parent / "modules"


def _read(modules: Path, relative: str) -> bytes:
    path = modules / relative
    if not path.is_file():
        raise MissingModelError(f"{path} is missing: this mediapipe wheel ships no legacy models "
                                f"(0.10.9, 0.10.14 and 0.10.21 do)")
    return path.read_bytes()


def _with_image_normalisation(model: bytes, name: str) -> bytes:
    """The tflite model with input metadata saying: float input = RGB pixel / 255."""
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer

    writer = metadata_writer.MetadataWriter.create(bytearray(model))
    content, _ = writer.add_general_info(name).add_image_input(norm_mean=[0.0], norm_std=[255.0]).populate()
    return bytes(content)


def _write_bundle(models: dict[str, bytes], out: Path) -> Path:
    from mediapipe.tasks.python.metadata.metadata_writers import model_asset_bundle_utils

    with atomic_output(out) as tmp:
        model_asset_bundle_utils.create_model_asset_bundle(models, str(tmp))
    return out


def build_pose_bundle(out: str | os.PathLike, modules: Path | None = None) -> Path:
    """pose_detection + pose_landmark_full (with normalisation metadata) → a PoseLandmarker .task file."""
    modules = modules or legacy_model_dir()
    landmarks = _with_image_normalisation(_read(modules, "pose_landmark/pose_landmark_full.tflite"),
                                          "pose_landmarks_detector")
    return _write_bundle({"pose_detector.tflite": _read(modules, "pose_detection/pose_detection.tflite"),
                          "pose_landmarks_detector.tflite": landmarks}, Path(out))


def build_hand_bundle(out: str | os.PathLike, modules: Path | None = None) -> Path:
    """palm_detection_full + hand_landmark_full → a HandLandmarker .task file."""
    modules = modules or legacy_model_dir()
    return _write_bundle({"hand_detector.tflite": _read(modules, "palm_detection/palm_detection_full.tflite"),
                          "hand_landmarks_detector.tflite": _read(modules, "hand_landmark/hand_landmark_full.tflite")},
                         Path(out))


def build_bundles(out_dir: str | os.PathLike) -> list[Path]:
    """Both bundles under the official file names, ready for the tasks backend's model folder."""
    out_dir = Path(out_dir)
    return [build_pose_bundle(out_dir / TASK_FILES["pose"]), build_hand_bundle(out_dir / TASK_FILES["hand"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to write the .task files to (e.g. ComfyUI/models/emosh/mediapipe)")
    for path in build_bundles(parser.parse_args(argv).out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
