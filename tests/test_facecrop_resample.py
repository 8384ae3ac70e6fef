"""Face-crop resampling follows cv2.resize's pixel-centre convention (a half-pixel shift blurs every crop)."""
import cv2
import numpy as np

from emosh.facecrop import crop_resize


def test_crop_resize_matches_cv2_resize_of_the_same_box():
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (0, 0), 1.5)
    x1, y1, x2, y2 = 30, 20, 94, 84  # a 64-px box on whole pixels
    for size in (64, 128, 256):
        ours = crop_resize(frame, np.array([x1, y1, x2, y2], np.float32), size).astype(np.float32)
        ref = cv2.resize(frame[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        inner = slice(size // 16, -size // 16)  # borders differ only where cv2.resize clamps inside the box
        assert np.abs(ours - ref)[inner, inner].mean() < 0.6, size
