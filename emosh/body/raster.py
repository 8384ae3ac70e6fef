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

from functools import cached_property

import torch

_INSIDE_EPS = 1e-6  # barycentric tolerance: pixel centres exactly on a shared edge are never lost to rounding
_MAX_CANDIDATES = 1 << 21  # candidate pixels per vectorised pass (bounds memory for large triangles)
# Candidate-grid sides: a bounding box of n pixels is tested on the smallest listed side >= n (then powers of two).
_GRID_SIDES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64)


class Fragments:
    """Per-pixel result of :func:`rasterize` for B frames of H×W pixels.

    Stored compactly (the covered pixels only); the full-size maps ``face_id`` [B, H, W] int64 (-1 = background),
    ``bary`` [B, H, W, 3] (perspective-correct, 0 on background) and ``depth`` [B, H, W] (camera z, +inf on
    background) are built on first access. Shading code uses the compact fields directly, which is much faster.
    ``Fragments(face_id=..., bary=..., depth=...)`` builds one from full maps (e.g. a crop of another).
    """

    def __init__(self, face_id: torch.Tensor | None = None, bary: torch.Tensor | None = None,
                 depth: torch.Tensor | None = None, *, size: tuple[int, int, int] | None = None,
                 covered: torch.Tensor | None = None, covered_face: torch.Tensor | None = None,
                 covered_bary: torch.Tensor | None = None, covered_depth: torch.Tensor | None = None):
        if face_id is not None:
            size = tuple(face_id.shape)
            covered = (face_id.reshape(-1) >= 0).nonzero(as_tuple=True)[0]
            covered_face = face_id.reshape(-1).index_select(0, covered)
            covered_bary = bary.reshape(-1, 3).index_select(0, covered)
            covered_depth = depth.reshape(-1).index_select(0, covered)
            self.face_id, self.bary, self.depth = face_id, bary, depth  # cached_property slots, already known
        self.size: tuple[int, int, int] = tuple(int(n) for n in size)  # (B, H, W)
        self.covered = covered  # [P] int64 flat pixel indices b·H·W + i·W + j, ascending
        self.covered_face = covered_face  # [P] int64 face index of each covered pixel
        self.covered_bary = covered_bary  # [P, 3] perspective-correct barycentrics
        self.covered_depth = covered_depth  # [P] camera z

    def _full(self, values: torch.Tensor, fill: float, channels: int = 0) -> torch.Tensor:
        batch, height, width = self.size
        shape = (batch * height * width,) + ((channels,) if channels else ())
        out = torch.full(shape, fill, dtype=values.dtype, device=values.device)
        out[self.covered] = values
        return out.view(self.size + ((channels,) if channels else ()))

    @cached_property
    def face_id(self) -> torch.Tensor:
        return self._full(self.covered_face, -1)

    @cached_property
    def bary(self) -> torch.Tensor:
        return self._full(self.covered_bary, 0.0, 3)

    @cached_property
    def depth(self) -> torch.Tensor:
        return self._full(self.covered_depth, float("inf"))

    @cached_property
    def mask(self) -> torch.Tensor:
        """[B, H, W] bool: pixels covered by the mesh."""
        batch, height, width = self.size
        out = torch.zeros(batch * height * width, dtype=torch.bool, device=self.covered.device)
        out[self.covered] = True
        return out.view(self.size)

    def scatter(self, values: torch.Tensor, background: float | torch.Tensor) -> torch.Tensor:
        """Compact per-pixel ``values`` [P, C] → image [B, H, W, C] over a constant ``background``."""
        batch, height, width = self.size
        out = values.new_empty(batch * height * width, values.shape[-1])
        out[:] = torch.as_tensor(background, dtype=values.dtype, device=values.device)
        out[self.covered] = values
        return out.view(batch, height, width, -1)


def _grid_side(n: torch.Tensor) -> torch.Tensor:
    """Smallest candidate-grid side that holds a bounding box of ``n`` pixels (table lookup; powers of two beyond)."""
    largest = _GRID_SIDES[-1]
    table = torch.tensor([next(s for s in _GRID_SIDES if s >= k) for k in range(largest + 1)], device=n.device)
    listed = table.index_select(0, n.clamp(0, largest))
    big = n > largest
    if bool(big.any()):
        listed = torch.where(big, torch.exp2(torch.ceil(torch.log2(n.float()))).long(), listed)
    return listed


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
    num_faces = faces.shape[0]
    tri = points.float().index_select(1, faces.reshape(-1)).view(batch * num_faces, 3, 3)  # [B·F, corner, xyz]
    x, y, z = tri.permute(2, 0, 1).contiguous().unbind(0)  # each [B·F, 3]
    area2 = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    # Pixel-centre bounding box: columns j with xmin <= j + 0.5 <= xmax (likewise rows).
    xmin, xmax = x.aminmax(dim=1)
    ymin, ymax = y.aminmax(dim=1)
    j0, j1 = torch.ceil(xmin - 0.5), torch.floor(xmax - 0.5)
    i0, i1 = torch.ceil(ymin - 0.5), torch.floor(ymax - 0.5)
    clipped = (j0 < 0) | (i0 < 0) | (j1 > width - 1) | (i1 > height - 1)
    j0, i0 = j0.clamp(min=0), i0.clamp(min=0)
    j1, i1 = j1.clamp(max=width - 1), i1.clamp(max=height - 1)
    keep = (area2.abs() > 1e-9) & (z.amin(dim=1) > near) & (j1 >= j0) & (i1 >= i0) & torch.isfinite(area2)
    if cull_backfaces:
        # In y-down pixel coordinates a counter-clockwise (front-facing) triangle has negative signed area.
        keep &= area2 < 0
    # From here on only the N kept triangles (about half of a closed mesh when culling): ``tri_ids`` maps back.
    tri_ids = keep.nonzero(as_tuple=True)[0]
    corner_xyz = torch.stack([x, y, z], dim=1).index_select(0, tri_ids)  # [N, 3 (x, y, z), 3 corners]
    x, y, z = corner_xyz.unbind(1)
    box = torch.stack([area2, j0, j1, i0, i1, clipped.float()], dim=1).index_select(0, tri_ids)
    area2, j0, j1, i0, i1, clipped = box.unbind(1)
    clipped = clipped > 0

    # Linear forms over the integer offset (dx, dy) from the box's first pixel centre (small numbers keep float32
    # precise anywhere on the image): screen barycentrics l0, l1 and inverse depth 1/z, which is linear in screen
    # space. Row k of ``forms`` holds (value at the origin, d/dx, d/dy).
    ox, oy = j0 + 0.5, i0 + 0.5
    inv = 1.0 / area2
    l0 = ((x[:, 1] - ox) * (y[:, 2] - oy) - (x[:, 2] - ox) * (y[:, 1] - oy)) * inv
    l1 = ((x[:, 2] - ox) * (y[:, 0] - oy) - (x[:, 0] - ox) * (y[:, 2] - oy)) * inv
    l0x, l0y = (y[:, 1] - y[:, 2]) * inv, (x[:, 2] - x[:, 1]) * inv
    l1x, l1y = (y[:, 2] - y[:, 0]) * inv, (x[:, 0] - x[:, 2]) * inv
    iz = 1.0 / z
    d0, d1 = iz[:, 0] - iz[:, 2], iz[:, 1] - iz[:, 2]
    forms = torch.stack([
        l0, l0x, l0y,
        l1, l1x, l1y,
        iz[:, 2] + l0 * d0 + l1 * d1, l0x * d0 + l1x * d1, l0y * d0 + l1y * d1,
    ], dim=1).view(-1, 3, 3)
    box_w, box_h = (j1 - j0 + 1).long(), (i1 - i0 + 1).long()
    frame = torch.div(tri_ids, num_faces, rounding_mode="floor")
    base = frame * (height * width) + i0.long() * width + j0.long()  # flat index of each box's first pixel

    # Packed key: inverse depth's float bits (monotonic for positive floats) above the triangle's index, so the
    # largest key is the nearest surface; 0 = background.
    index_bits = max(1, int(tri_ids.shape[0])).bit_length()
    zbuf = torch.zeros(batch * height * width, dtype=torch.int64, device=device)
    bucket_key = _grid_side(box_w) * 65536 + _grid_side(box_h)
    sorted_keys, order = torch.sort(bucket_key)
    keys, counts = torch.unique_consecutive(sorted_keys, return_counts=True)
    last_pixel = zbuf.shape[0] - 1
    offset = 0
    for key, count in zip(keys.tolist(), counts.tolist()):
        members = order[offset:offset + count]
        offset += count
        gw, gh = key // 65536, key % 65536
        dy, dx = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
        dx, dy = dx.reshape(-1), dy.reshape(-1)
        dxf, dyf = dx.float().view(1, 1, -1), dy.float().view(1, 1, -1)
        pixel_offset = (dy * width + dx)[None, :]
        step = max(1, _MAX_CANDIDATES // (gw * gh))
        for start in range(0, count, step):
            m = members[start:start + step]
            f = forms.index_select(0, m)  # [n, (l0, l1, 1/z), (origin, d/dx, d/dy)]
            # Plain element-wise maths: a K=3 matmul would wake BLAS threads that spin on a busy machine.
            values = torch.addcmul(torch.addcmul(f[:, :, :1], f[:, :, 1:2], dxf), f[:, :, 2:3], dyf)  # [n, 3, S]
            w0, w1, inv_depth = values.unbind(1)
            inside = (w0 >= -_INSIDE_EPS) & (w1 >= -_INSIDE_EPS) & (w0 + w1 <= 1.0 + _INSIDE_EPS) & (inv_depth > 0)
            if bool(clipped.index_select(0, m).any()) or gw > _GRID_SIDES[3] or gh > _GRID_SIDES[3]:
                # Candidates beyond the (image-clamped) box may lie inside the triangle but off the image.
                inside &= (dx[None, :] < box_w.index_select(0, m)[:, None])
                inside &= (dy[None, :] < box_h.index_select(0, m)[:, None])
            packed = ((inv_depth.view(torch.int32).long() << index_bits) + m[:, None]) * inside
            pix = (base.index_select(0, m)[:, None] + pixel_offset).clamp(max=last_pixel)
            zbuf.scatter_reduce_(0, pix.reshape(-1), packed.reshape(-1), reduce="amax", include_self=True)

    covered = zbuf.nonzero(as_tuple=True)[0]
    tri_idx = zbuf.index_select(0, covered) & ((1 << index_bits) - 1)
    rem = covered - base.index_select(0, tri_idx)
    dy = torch.div(rem, width, rounding_mode="floor")
    dx = (rem - dy * width).float()[:, None]
    f = forms.index_select(0, tri_idx)[:, :2]  # [P, (l0, l1), (origin, d/dx, d/dy)]
    l01 = f[..., 0] + f[..., 1] * dx + f[..., 2] * dy.float()[:, None]  # [P, 2]
    persp = torch.empty(l01.shape[0], 3, device=device)
    persp[:, :2] = l01
    persp[:, 2] = 1.0 - l01.sum(dim=1)
    persp = persp.clamp_(min=0.0).mul_(iz.index_select(0, tri_idx))  # perspective correction: weights / z
    inv_depth = persp.sum(dim=1, keepdim=True)
    face = tri_ids.index_select(0, tri_idx) - frame.index_select(0, tri_idx) * num_faces
    return Fragments(size=(batch, height, width), covered=covered, covered_face=face,
                     covered_bary=persp / inv_depth, covered_depth=1.0 / inv_depth[:, 0])


def interpolate(fragments: Fragments, faces: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
    """Per-pixel vertex ``attributes`` ([B, V, C] per frame or [V, C] shared) → [B, H, W, C]; zeros on background."""
    return fragments.scatter(interpolate_covered(fragments, faces, attributes), 0.0)


def interpolate_covered(fragments: Fragments, faces: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
    """Like :func:`interpolate` but only for the covered pixels, in ``fragments.covered`` order: [P, C].

    Shading works on this compact list (the body covers a fraction of the frame), which is several times faster.
    """
    _, height, width = fragments.size
    faces = faces.to(device=attributes.device, dtype=torch.long)
    corners = faces.index_select(0, fragments.covered_face)  # [P, 3] vertex ids
    channels = attributes.shape[-1]
    if attributes.dim() == 3:
        frame = torch.div(fragments.covered, height * width, rounding_mode="floor")
        corners = corners + (frame * attributes.shape[1])[:, None]
    values = attributes.reshape(-1, channels).index_select(0, corners.reshape(-1)).view(-1, 3, channels)
    return (values * fragments.covered_bary.to(attributes.dtype)[..., None]).sum(dim=1)
