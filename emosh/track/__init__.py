"""EHM Tracker: mediapipe landmark detection (``detect``) and confidence-aware EHM fitting of those landmarks."""
