"""Per-pixel maps from rasterised fragments: semantic colour × lighting (the coarse half of the hybrid signal),
normals, depth, mask and part colours.

Semantic colour: every vertex gets a fixed colour from its position on the canonical (average-shape, rest-pose)
body, so the same surface point has the same colour in every pose and for every body shape; the generator reads
body orientation and part identity from it. The gradient follows the paper figure: green head and shoulders, cyan
and blue torso, blue-violet hips, magenta feet; the subject's left arm turns orange toward the hand, the right green.
"""
from __future__ import annotations

import colorsys

import torch

from .model import BodyModel
from .raster import Fragments, interpolate_covered

# Hue (degrees) by normalised height: magenta feet, violet hips, blue chest, green shoulders and head.
_HUE_BY_HEIGHT = ((0.0, 300.0), (0.5, 250.0), (0.7, 205.0), (0.85, 150.0), (1.0, 135.0))
_LEFT_HAND_HUE, _RIGHT_HAND_HUE = 40.0, 105.0
_semantic_cache: dict[tuple[str, str], torch.Tensor] = {}

# Light in camera coordinates (x right, y down, z forward): from the camera, slightly above and to the left.
_LIGHT_DIR = (-0.35, -0.45, -0.82)
_AMBIENT = 0.5
_DIFFUSE = 0.55


def semantic_colors(model: BodyModel) -> torch.Tensor:
    """[V, 3] float RGB in [0, 1]: the fixed colour of each vertex (cached per model and device)."""
    key = (model.backend, str(model.device))
    if key not in _semantic_cache:
        with torch.no_grad():
            rest = model.rest().vertices[0]
        height = rest[:, model.up_axis]
        u = (height - height.min()) / (height.max() - height.min())  # 0 feet .. 1 top of head
        # World x is the subject's left for both backends (Anny faces -Y with Z up, SMPL-X faces +Z with Y up).
        x = rest[:, 0] / rest[:, 0].abs().max()  # -1 .. 1
        # Along the arms the hue turns toward a side colour: orange for the subject's left hand, green for the right.
        t = ((x.abs() - 0.2) / 0.7).clamp(0.0, 1.0)
        arm = t * t * (3.0 - 2.0 * t)
        side = torch.where(x > 0, torch.full_like(x, _LEFT_HAND_HUE), torch.full_like(x, _RIGHT_HAND_HUE))
        hue_deg = torch.lerp(_interp(u, _HUE_BY_HEIGHT), side, arm)
        hue = (hue_deg % 360.0) / 360.0
        _semantic_cache[key] = hsv_to_rgb(hue, torch.full_like(hue, 0.62), torch.full_like(hue, 0.95))
    return _semantic_cache[key]


def _interp(u: torch.Tensor, knots: tuple[tuple[float, float], ...]) -> torch.Tensor:
    """Piecewise-linear function through ``knots`` (x ascending) evaluated at ``u``."""
    xs = u.new_tensor([k[0] for k in knots])
    ys = u.new_tensor([k[1] for k in knots])
    i = torch.searchsorted(xs, u.clamp(xs[0], xs[-1]).contiguous(), right=True).clamp(1, len(knots) - 1)
    t = (u - xs[i - 1]) / (xs[i] - xs[i - 1])
    return ys[i - 1] + t.clamp(0, 1) * (ys[i] - ys[i - 1])


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Vectorised HSV → RGB for [N] tensors with h, s, v in [0, 1] → [N, 3]."""
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    table = torch.stack([
        torch.stack([v, t, p], -1), torch.stack([q, v, p], -1), torch.stack([p, v, t], -1),
        torch.stack([p, q, v], -1), torch.stack([t, p, v], -1), torch.stack([v, p, q], -1),
    ], dim=1)  # [N, 6, 3]
    return table[torch.arange(h.shape[0], device=h.device), i]


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals [B, V, 3] (right-handed winding, outward for the body models)."""
    tri = vertices.index_select(1, faces.reshape(-1)).view(vertices.shape[0], -1, 3, 3)  # [B, F, 3, 3]
    face_n = torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
    normals = torch.zeros_like(vertices)
    for k in range(3):
        normals.index_add_(1, faces[:, k], face_n)
    return torch.nn.functional.normalize(normals, dim=-1, eps=1e-12)


def shaded(fragments: Fragments, faces: torch.Tensor, colors: torch.Tensor, cam_normals: torch.Tensor,
           background: float = 1.0, as_uint8: bool = False) -> torch.Tensor:
    """Semantic colour × lighting over a flat ``background`` → [B, H, W, 3] (float 0..1, or uint8 0..255).

    Lit per vertex and interpolated (Gouraud): on a 13k-vertex body it looks like per-pixel shading at half the cost.
    """
    lit = (colors * lambert(cam_normals)).clamp(0.0, 1.0)  # [B, V, 3]
    pixels = interpolate_covered(fragments, faces, lit)
    if as_uint8:
        return fragments.scatter((pixels * 255.0 + 0.5).to(torch.uint8), int(round(background * 255)))
    return fragments.scatter(pixels, background)


def lambert(normals: torch.Tensor) -> torch.Tensor:
    """Ambient + diffuse intensity [..., 1] for camera-space normals (two-sided, so thin parts stay lit)."""
    light = normals.new_tensor(_LIGHT_DIR)
    light = light / light.norm()
    return _AMBIENT + _DIFFUSE * (normals @ light).abs()[..., None]


def pixel_normals(fragments: Fragments, faces: torch.Tensor, cam_normals: torch.Tensor) -> torch.Tensor:
    """Unit camera-space normal [P, 3] of each covered pixel."""
    return torch.nn.functional.normalize(interpolate_covered(fragments, faces, cam_normals), dim=-1, eps=1e-12)


def normal_map(fragments: Fragments, faces: torch.Tensor, cam_normals: torch.Tensor) -> torch.Tensor:
    """Normals as colours in the usual normal-map convention (x right, y up, z toward the viewer → RGB 0..1);
    background black."""
    normals = pixel_normals(fragments, faces, cam_normals)
    return fragments.scatter(normals * normals.new_tensor([0.5, -0.5, -0.5]) + 0.5, 0.0)


def depth_map(fragments: Fragments, centre_depth: torch.Tensor, span: float = 1.0) -> torch.Tensor:
    """Relative depth as brightness (near = bright, background 0): 0.55 at the body centre's depth
    ``centre_depth`` [B], ±``span``/2 metres around it spread over 0.05..1. Anchoring on the body instead of each
    frame's min/max keeps the brightness steady over a video (no flicker when a hand comes forward)."""
    _, height, width = fragments.size
    frame = torch.div(fragments.covered, height * width, rounding_mode="floor")
    centre = centre_depth.index_select(0, frame)
    value = (0.55 + (centre - fragments.covered_depth) / span).clamp(0.05, 1.0)
    return fragments.scatter(value[:, None].expand(-1, 3), 0.0)


def part_palette(num_parts: int, device: torch.device) -> torch.Tensor:
    """[P, 3] distinct, fixed colours for body parts (evenly spaced hues, alternating brightness)."""
    colours = [colorsys.hsv_to_rgb(i / num_parts, 0.85, 1.0 if i % 2 == 0 else 0.7) for i in range(num_parts)]
    return torch.tensor(colours, device=device, dtype=torch.float32)


def covered_parts(fragments: Fragments, faces: torch.Tensor, part_labels: torch.Tensor) -> torch.Tensor:
    """Body-part index [P] of each covered pixel (the part of its face's first corner)."""
    return part_labels.index_select(0, faces[:, 0].index_select(0, fragments.covered_face))


def parts_map(fragments: Fragments, faces: torch.Tensor, part_labels: torch.Tensor) -> torch.Tensor:
    """Part-label colours [B, H, W, 3]; background black."""
    palette = part_palette(int(part_labels.max()) + 1, part_labels.device)
    return fragments.scatter(palette.index_select(0, covered_parts(fragments, faces, part_labels)), 0.0)
