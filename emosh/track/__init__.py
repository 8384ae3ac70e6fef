"""EHM Tracker: mediapipe landmark detection (``detect``) and confidence-aware EHM fitting of those landmarks."""

from .correspondence import LandmarkTable, landmark_table, mesh_landmarks
from .tracker import WindowedTracker, reprojection_error_pct, track_file, track_frames

__all__ = ["LandmarkTable", "WindowedTracker", "landmark_table", "mesh_landmarks", "reprojection_error_pct",
           "track_file", "track_frames"]
