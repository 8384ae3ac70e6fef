"""Silhouette terms that give a still photo's body its girth (landmarks fix height and proportions only).

The person mask comes from the detector's own segmentation. Clothes and hair make it larger than the body, never
smaller, so the two terms are asymmetric:

* ``outside`` — every projected mesh vertex should lie on the person: the distance (in % of the person's box height)
  from a vertex outside the mask to the mask, from a distance transform, sampled bilinearly. Strong: a body never
  extends past its clothes.
* ``uncovered`` — every person pixel should have a mesh vertex nearby: the distance from sampled mask pixels to the
  nearest projected vertex, under a Geman-McClure cap, so far-off clothing (a skirt between the legs, long hair,
  a surfboard edge) saturates and stops pulling while a belly or a broad chest a few % outside the mesh pulls it out.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

MASK_THRESHOLD = 0.5
MAX_MASK_POINTS = 1500  # person pixels sampled for the coverage term (a grid, so it is deterministic)
COVER_CLOSING_PX = 7  # closing of the splatted vertices that stands for the mesh's coverage (odd)
MAX_VERTICES = 5000  # projected vertices the coverage term searches (an evenly spaced subset of the mesh)


class Silhouette:
    """Distance field and sample points of one person mask [H, W] (pixels of the fitted image)."""

    def __init__(self, mask: torch.Tensor, box_px: float, cover_sigma_pct: float = 3.0):
        person = (mask.detach().cpu().numpy() >= MASK_THRESHOLD).astype(np.uint8)
        if person.sum() == 0:
            raise ValueError("empty person mask")
        self.device = mask.device
        self.size = person.shape  # (H, W)
        self.box_px = float(box_px)
        self.cover_sigma = float(cover_sigma_pct)
        outside = cv2.distanceTransform(1 - person, cv2.DIST_L2, 5)  # px to the nearest person pixel; 0 on it
        self.outside_field = torch.from_numpy(outside).to(self.device)[None, None]  # [1, 1, H, W]
        ys, xs = np.nonzero(person)
        stride = max(int(np.ceil(np.sqrt(len(ys) / MAX_MASK_POINTS))), 1)
        keep = (ys % stride == 0) & (xs % stride == 0)
        self.points = torch.from_numpy(np.stack([xs[keep], ys[keep]], 1).astype(np.float32)).to(self.device)

    def _sample(self, field: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        """Bilinear lookup of field [1, 1, H, W] at pixel positions xy [N, 2] (pixel-centre convention)."""
        h, w = self.size
        grid = torch.stack([(xy[:, 0] + 0.5) / w * 2 - 1, (xy[:, 1] + 0.5) / h * 2 - 1], -1)
        return torch.nn.functional.grid_sample(field, grid[None, None], mode="bilinear", padding_mode="border",
                                               align_corners=False)[0, 0, 0]

    def outside(self, vertices2d: torch.Tensor) -> torch.Tensor:
        """Mean squared distance (% of box) of the projected vertices [V, 2] past the person's outline. Vertices
        beyond the image border count as on the person: the photo does not show whether the body goes on there
        (feet cut off by the frame), and the clamped field would pull them back to the border's own outline."""
        h, w = self.size
        in_image = ((vertices2d[:, 0] >= -0.5) & (vertices2d[:, 0] <= w - 0.5)
                    & (vertices2d[:, 1] >= -0.5) & (vertices2d[:, 1] <= h - 0.5))
        d = self._sample(self.outside_field, vertices2d) / self.box_px * 100.0
        return torch.where(in_image, d, 0.0).square().mean()

    def uncovered(self, vertices2d: torch.Tensor) -> torch.Tensor:
        """Capped distance (% of box) from the person pixels the mesh does not cover to the nearest projected vertex
        [V, 2], summed and divided by the number of person pixels. Covered pixels count zero: a distance to the
        nearest *vertex* would otherwise favour a thinner mesh, whose vertices lie closer together."""
        points = self.points[~self._covered(vertices2d.detach())[self.points[:, 1].long(), self.points[:, 0].long()]]
        if points.shape[0] == 0:
            return vertices2d.new_zeros(())
        step = max(vertices2d.shape[0] // MAX_VERTICES, 1)
        d = torch.cdist(points, vertices2d[::step]).min(1).values / self.box_px * 100.0
        s2 = self.cover_sigma ** 2
        return (d.square() / (d.square() + s2) * s2).sum() / self.points.shape[0]

    def _covered(self, vertices2d: torch.Tensor) -> torch.Tensor:
        """[H, W] bool: pixels under the mesh, from its projected vertices splatted and closed over a few pixels (the
        mesh's vertices are a few pixels apart at photo resolution; occlusion does not matter for an outline)."""
        h, w = self.size
        xy = vertices2d.round().long()
        keep = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
        grid = torch.zeros(1, 1, h, w, device=vertices2d.device)
        grid[0, 0, xy[keep, 1], xy[keep, 0]] = 1.0
        k = COVER_CLOSING_PX
        dilated = torch.nn.functional.max_pool2d(grid, k, stride=1, padding=k // 2)
        closed = -torch.nn.functional.max_pool2d(-dilated, k, stride=1, padding=k // 2)
        return closed[0, 0] > 0.5


def mask_scores(mesh_mask: np.ndarray, person_mask: np.ndarray) -> dict[str, float]:
    """IoU, precision (share of the mesh's pixels on the person) and coverage (share of the person's pixels under
    the mesh) of two boolean [H, W] masks."""
    mesh, person = mesh_mask.astype(bool), person_mask.astype(bool)
    inter = float((mesh & person).sum())
    return dict(silhouette_iou=inter / max(float((mesh | person).sum()), 1.0),
                precision=inter / max(float(mesh.sum()), 1.0), coverage=inter / max(float(person.sum()), 1.0))
