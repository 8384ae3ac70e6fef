"""Pinhole camera shared by the tracker, renderer, align and exporters (one place for projection maths).

OpenCV convention: x right, y down, z forward; pixel = f * (x/z, y/z) + principal point (the image centre).
Per frame: focal f (pixels), rotation R and translation t taking model-world points into the camera frame.
"""
from __future__ import annotations

import math

import torch


def to_camera(points: torch.Tensor, cam_R: torch.Tensor, cam_t: torch.Tensor) -> torch.Tensor:
    """World → camera frame: [B, N, 3] with R [B, 3, 3], t [B, 3]."""
    return points @ cam_R.transpose(1, 2) + cam_t[:, None, :]


def project(points: torch.Tensor, focal: torch.Tensor, cam_R: torch.Tensor, cam_t: torch.Tensor,
            image_size: tuple[int, int]) -> torch.Tensor:
    """World points [B, N, 3] → pixels [B, N, 2] (x, y) for an image of ``(height, width)``."""
    cam = to_camera(points, cam_R, cam_t)
    return project_camera_points(cam, focal, image_size)


def project_camera_points(cam: torch.Tensor, focal: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    height, width = image_size
    z = cam[..., 2:3].clamp(min=1e-4)
    centre = cam.new_tensor([width / 2.0, height / 2.0])
    return focal.view(-1, 1, 1) * cam[..., :2] / z + centre


def default_focal(image_size: tuple[int, int], fov_degrees: float = 50.0) -> float:
    """Focal length (pixels) of a typical phone/webcam field of view over the longer image side."""
    return 0.5 * max(image_size) / math.tan(math.radians(fov_degrees) / 2.0)


def view_rotation(up_axis: int) -> torch.Tensor:
    """Rotation that looks at a model standing along ``up_axis`` from its front.

    Anny (Z up, facing -Y): camera x = world x, camera y (down) = -world z, camera z (forward) = +world y.
    SMPL-X (Y up, facing +Z): camera x = world x, camera y = -world y, camera z = -world z.
    """
    if up_axis == 2:
        return torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    if up_axis == 1:
        return torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
    raise ValueError(f"unsupported up axis {up_axis}")
