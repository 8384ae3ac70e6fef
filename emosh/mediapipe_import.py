"""The one way EMOSH imports mediapipe (the tracker's detectors, the preview's person segmentation, benchmarks)."""
from __future__ import annotations

import warnings

from .errors import InputError


def import_mediapipe():
    """mediapipe, with its known protobuf deprecation notice (harmless with protobuf 4.x) muted."""
    warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated")
    try:
        import mediapipe as mp
    except ImportError as exc:  # pragma: no cover - mediapipe is a hard requirement
        raise InputError("mediapipe is not installed: pip install -r requirements.txt") from exc
    return mp
