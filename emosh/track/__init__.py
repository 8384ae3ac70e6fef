"""EHM Tracker: mediapipe landmark detection (``detect``) and confidence-aware EHM fitting of those landmarks."""

from .tracker import WindowedTracker, reprojection_error_pct, track_file, track_frames

__all__ = ["WindowedTracker", "reprojection_error_pct", "track_file", "track_frames"]
