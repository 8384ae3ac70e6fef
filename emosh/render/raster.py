"""The project's one rasteriser: a batched, pure-PyTorch z-buffer (CPU and CUDA, no compiled extensions).

Input points are already projected: ``(x_px, y_px, z_camera)`` per vertex (see :mod:`emosh.body.camera`).
Pixel convention: pixel ``(i, j)`` (row, column) covers ``[j, j+1) × [i, i+1)`` and is sampled at its centre
``(j + 0.5, i + 0.5)``, the continuous coordinate system of ``project_camera_points`` (principal point = W/2, H/2),
so a mask pixel is set exactly when the projected surface covers that pixel's centre.

How it is fast without a compiled kernel:
  1. per triangle (all frames at once): screen-space barycentric plane coefficients, its pixel bounding box,
     and culling of degenerate, behind-the-camera, off-screen and (optionally) back-facing triangles;
  2. triangles are bucketed by bounding-box size; each bucket tests its triangles against a small dense grid of
     candidate pixels by broadcasting (no per-pixel Python);
  3. every covered candidate writes one packed int64 key ``float_bits(depth) << k | triangle`` into the depth
     buffer with ``scatter_reduce(amin)``: the nearest triangle wins in a single vectorised pass;
  4. perspective-correct barycentrics and depth are then computed only for the covered pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_INSIDE_EPS = 1e-6  # barycentric tolerance: pixel centres exactly on a shared edge are never lost to rounding
_MAX_CANDIDATES = 1 << 22  # candidate pixels per vectorised pass (bounds memory for large triangles)
_EXACT_BOX = 4  # bounding boxes up to this many pixels per side get an exact-size bucket, larger ones a power of 2


@dataclass
class Fragments:
    """Per-pixel result of :func:`rasterize` for B frames of H×W pixels."""

    face_id: torch.Tensor  # [B, H, W] int64 index into ``faces``; -1 on background
    bary: torch.Tensor  # [B, H, W, 3] perspective-correct barycentric weights of the face's corners; 0 on background
    depth: torch.Tensor  # [B, H, W] camera-space z of the visible surface; +inf on background

    @property
    def mask(self) -> torch.Tensor:
        """[B, H, W] bool: pixels covered by the mesh."""
        return self.face_id >= 0


def _bucket_size(n: torch.Tensor) -> torch.Tensor:
    """Candidate-grid side for bounding boxes of ``n`` pixels: exact when small, else the next power of two."""
    pow2 = torch.exp2(torch.ceil(torch.log2(n.clamp(min=1).float()))).long()
    return torch.where(n <= _EXACT_BOX, n, pow2)


def rasterize(points: torch.Tensor, faces: torch.Tensor, image_size: tuple[int, int],
              cull_backfaces: bool = False, near: float = 1e-4) -> Fragments:
    """Z-buffer ``faces`` [F, 3] over ``points`` [B, V, 3] = (x_px, y_px, z_camera) into ``image_size`` (H, W).

    ``cull_backfaces`` drops triangles whose outward normal (right-handed winding) points away from the camera;
    use it for closed, consistently wound meshes such as the body model (halves the work).
    Triangles with a corner at ``z <= near`` are skipped (no near-plane clipping is needed for people in view).
    """
    height, width = int(image_size[0]), int(image_size[1])
    batch, device = points.shape[0], points.device
    faces = faces.to(device=device, dtype=torch.long)
    pts = points.float()
    tri = pts[:, faces]  # [B, F, 3 corners, 3]
    x, y, z = tri[..., 0], tri[..., 1], tri[..., 2]
    area2 = (x[..., 1] - x[..., 0]) * (y[..., 2] - y[..., 0]) - (x[..., 2] - x[..., 0]) * (y[..., 1] - y[..., 0])
    # Pixel-centre bounding box: columns j with xmin <= j + 0.5 <= xmax.
    j0 = torch.ceil(x.amin(-1) - 0.5).clamp(min=0)
    j1 = torch.floor(x.amax(-1) - 0.5).clamp(max=width - 1)
    i0 = torch.ceil(y.amin(-1) - 0.5).clamp(min=0)
    i1 = torch.floor(y.amax(-1) - 0.5).clamp(max=height - 1)
    keep = (area2.abs() > 1e-9) & (z.amin(-1) > near) & (j1 >= j0) & (i1 >= i0) & torch.isfinite(area2)
    if cull_backfaces:
        # In y-down pixel coordinates a counter-clockwise (front-facing) triangle has negative signed area.
        keep &= area2 < 0
    frame_idx, face_idx = keep.nonzero(as_tuple=True)  # compact list of the N triangles worth rasterising
    sel = (frame_idx, face_idx)
    x, y, z, area2 = x[sel], y[sel], z[sel], area2[sel]
    j0, j1, i0, i1 = j0[sel], j1[sel], i0[sel], i1[sel]

    # Screen-space barycentric planes l_k(dx, dy) = o_k + gx_k * dx + gy_k * dy, with (dx, dy) the integer pixel
    # offset from the box's first pixel centre (small numbers keep float32 precise anywhere on the image).
    ox, oy = j0 + 0.5, i0 + 0.5
    inv = 1.0 / area2
    l0 = ((x[:, 1] - ox) * (y[:, 2] - oy) - (x[:, 2] - ox) * (y[:, 1] - oy)) * inv
    l1 = ((x[:, 2] - ox) * (y[:, 0] - oy) - (x[:, 0] - ox) * (y[:, 2] - oy)) * inv
    coeffs = torch.stack([
        l0, (y[:, 1] - y[:, 2]) * inv, (x[:, 2] - x[:, 1]) * inv,
        l1, (y[:, 2] - y[:, 0]) * inv, (x[:, 0] - x[:, 2]) * inv,
        1.0 / z[:, 0], 1.0 / z[:, 1], 1.0 / z[:, 2],
    ], dim=1)  # [N, 9]
    box_w = (j1 - j0 + 1).long()
    box_h = (i1 - i0 + 1).long()
    base = frame_idx * (height * width) + i0.long() * width + j0.long()  # flat index of each box's first pixel

    index_bits = max(1, int(coeffs.shape[0]).bit_length())
    empty_key = torch.iinfo(torch.int64).max
    zbuf = torch.full((batch * height * width,), empty_key, dtype=torch.int64, device=device)
    bucket_w, bucket_h = _bucket_size(box_w), _bucket_size(box_h)
    bucket_key = bucket_w * 65536 + bucket_h
    for key in torch.unique(bucket_key).tolist():
        bw, bh = key // 65536, key % 65536
        members = (bucket_key == key).nonzero(as_tuple=True)[0]
        dy, dx = torch.meshgrid(torch.arange(bh, device=device), torch.arange(bw, device=device), indexing="ij")
        dx, dy = dx.reshape(1, -1), dy.reshape(1, -1)
        step = max(1, _MAX_CANDIDATES // (bw * bh))
        for start in range(0, members.shape[0], step):
            m = members[start:start + step]
            c = coeffs[m]
            dxf, dyf = dx.float(), dy.float()
            w0 = c[:, 0:1] + c[:, 1:2] * dxf + c[:, 2:3] * dyf
            w1 = c[:, 3:4] + c[:, 4:5] * dxf + c[:, 5:6] * dyf
            w2 = 1.0 - w0 - w1
            inside = (w0 >= -_INSIDE_EPS) & (w1 >= -_INSIDE_EPS) & (w2 >= -_INSIDE_EPS)
            inside &= (dx < box_w[m, None]) & (dy < box_h[m, None])
            depth = 1.0 / (w0 * c[:, 6:7] + w1 * c[:, 7:8] + w2 * c[:, 8:9])
            packed = (depth.view(torch.int32).long() << index_bits) | m[:, None]
            packed = torch.where(inside & (depth > 0), packed, torch.full_like(packed, empty_key))
            # Out-of-box candidates carry the empty key, so clamping their offsets keeps indices in the image.
            pix = base[m, None] + torch.minimum(dy, box_h[m, None] - 1) * width + torch.minimum(dx, box_w[m, None] - 1)
            zbuf.scatter_reduce_(0, pix.reshape(-1), packed.reshape(-1), reduce="amin", include_self=True)

    face_id = torch.full((batch * height * width,), -1, dtype=torch.long, device=device)
    bary = torch.zeros(batch * height * width, 3, device=device)
    depth = torch.full((batch * height * width,), float("inf"), device=device)
    covered = (zbuf != empty_key).nonzero(as_tuple=True)[0]
    tri_idx = zbuf[covered] & ((1 << index_bits) - 1)
    c = coeffs[tri_idx]
    rem = covered - base[tri_idx]
    dyf, dxf = (rem // width).float(), (rem % width).float()
    w0 = c[:, 0] + c[:, 1] * dxf + c[:, 2] * dyf
    w1 = c[:, 3] + c[:, 4] * dxf + c[:, 5] * dyf
    screen = torch.stack([w0, w1, 1.0 - w0 - w1], dim=1).clamp(min=0.0)
    persp = screen * c[:, 6:9]  # perspective correction: weights / z, renormalised
    inv_depth = persp.sum(dim=1, keepdim=True)
    face_id[covered] = face_idx[tri_idx]
    bary[covered] = persp / inv_depth
    depth[covered] = 1.0 / inv_depth[:, 0]
    return Fragments(face_id=face_id.view(batch, height, width), bary=bary.view(batch, height, width, 3),
                     depth=depth.view(batch, height, width))


def interpolate(fragments: Fragments, faces: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
    """Per-pixel vertex ``attributes`` ([B, V, C] per frame or [V, C] shared) → [B, H, W, C]; zeros on background."""
    batch, height, width = fragments.face_id.shape
    faces = faces.to(device=attributes.device, dtype=torch.long)
    flat_face = fragments.face_id.reshape(-1)
    covered = (flat_face >= 0).nonzero(as_tuple=True)[0]
    corners = faces[flat_face[covered]]  # [P, 3] vertex ids
    weights = fragments.bary.reshape(-1, 3)[covered].to(attributes.dtype)
    if attributes.dim() == 2:
        values = attributes[corners]  # [P, 3, C]
    else:
        frame = covered // (height * width)
        values = attributes[frame[:, None], corners]
    out = attributes.new_zeros(batch * height * width, attributes.shape[-1])
    out[covered] = (values * weights[..., None]).sum(dim=1)
    return out.view(batch, height, width, -1)
