"""Training-free preview animator: the reference photo painted onto the fitted body mesh, re-posed by the track.

Why it exists: the main job must produce a video of the reference person on a CPU with nothing to download. It is
also a sensible init video for the diffusion sampler (``denoise < 1``).

How:
  * texture (once): Anny's UV atlas is rasterised; every texel is a point on the reference-fitted mesh, projected
    into the reference photo. Texels the reference camera sees (z-buffer test, facing the camera) take the photo's
    colour at full photo resolution; unseen texels (the back, occluded limbs) take colours spread over the mesh
    from the nearest seen vertices of the same body part (breadth-first over mesh edges). A mip pyramid of the atlas
    keeps the densely textured head sharp without aliasing when the face is small on screen;
  * background (once): the reference person is masked by the fitted mesh (dilated), then inpainted with OpenCV at a
    reduced resolution and pasted back only inside the mask;
  * per batch of frames: the retargeted mesh is rasterised with the project's rasteriser, textured with trilinear
    (mip) lookups, and composited with a feathered edge over the background.
Everything is deterministic and works batch by batch, so memory does not grow with the video length.
"""
from __future__ import annotations

import math

import cv2
import kornia
import numpy as np
import torch
import torch.nn.functional as F

from ..body.camera import project_camera_points, to_camera
from ..body.model import BodyModel
from ..body.track import EHMTrack
from ..errors import InputError
from ..render.raster import Fragments, interpolate, rasterize

MAX_REFERENCE_SIDE = 2048  # larger photos are reduced first: the atlas cannot hold more detail than this anyway


def posed_vertices(model: BodyModel, track: EHMTrack) -> torch.Tensor:
    """World-space vertices [T, V, 3] of ``track`` on ``model``'s device."""
    with torch.no_grad():
        motion = {k: v.to(model.device) for k, v in track.motion().items()}
        return model(track.shape.to(model.device), **motion).vertices


def screen_points(vertices: torch.Tensor, track: EHMTrack) -> torch.Tensor:
    """World vertices [B, V, 3] → rasteriser input (x_px, y_px, z_camera) with the track's per-frame camera."""
    dev = vertices.device
    cam = to_camera(vertices, track.cam_R.to(dev), track.cam_t.to(dev))
    xy = project_camera_points(cam, track.focal.to(dev), track.image_size)
    return torch.cat([xy, cam[..., 2:3]], dim=-1)


def person_mask(model: BodyModel, track: EHMTrack, batch_size: int = 16) -> torch.Tensor:
    """[T, H, W] bool silhouette of the fitted mesh in the track's image frame."""
    masks = []
    for start in range(0, track.num_frames, batch_size):
        part = track.frames(start, start + batch_size)
        points = screen_points(posed_vertices(model, part), part)
        masks.append(rasterize(points, model.faces, part.image_size, cull_backfaces=True).mask)
    return torch.cat(masks)


# ---------------------------------------------------------------------------------------------------- texture
def _vertex_adjacency(faces: torch.Tensor, num_vertices: int, labels: torch.Tensor | None) -> torch.Tensor:
    """Sparse symmetric [V, V] adjacency of mesh edges (only edges inside one part when ``labels`` is given)."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = torch.cat([edges, edges.flip(1)])
    if labels is not None:
        edges = edges[labels[edges[:, 0]] == labels[edges[:, 1]]]
    values = torch.ones(edges.shape[0], device=faces.device)
    adj = torch.sparse_coo_tensor(edges.t(), values, (num_vertices, num_vertices)).coalesce()
    return torch.sparse_coo_tensor(adj.indices(), torch.ones_like(adj.values()), adj.shape).coalesce()


def _spread_colours(colours: torch.Tensor, known: torch.Tensor, adjacency: torch.Tensor,
                    max_steps: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Grow known vertex colours outward one edge ring per step: each unknown vertex takes the mean of its known
    neighbours, i.e. the colour of the nearest seen surface along the mesh (a cheap geodesic nearest)."""
    colours, known = colours.clone(), known.clone()
    for _ in range(max_steps):
        weight = torch.sparse.mm(adjacency, known.float()[:, None])[:, 0]
        fresh = (~known) & (weight > 0)
        if not fresh.any():
            break
        total = torch.sparse.mm(adjacency, colours * known.float()[:, None])
        colours[fresh] = total[fresh] / weight[fresh, None]
        known = known | fresh
    return colours, known


def _face_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    tri = vertices[faces]
    return F.normalize(torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1), dim=-1)


def _sample_image(image: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear colours [N, C] of ``image`` [C, H, W] at pixel positions ``xy`` [N, 2] (pixel i spans [i, i+1))."""
    h, w = image.shape[-2:]
    grid = torch.stack([2.0 * xy[:, 0] / w - 1.0, 2.0 * xy[:, 1] / h - 1.0], dim=-1)
    out = F.grid_sample(image[None], grid[None, None], mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].t()


def _fill_gutters(texture: torch.Tensor, valid: torch.Tensor, steps: int = 6) -> torch.Tensor:
    """Bleed chart colours a few texels into the empty atlas space so bilinear/mip lookups never mix in black."""
    tex, valid = texture * valid, valid.float()
    for _ in range(steps):
        total = F.avg_pool2d(tex[None], 3, 1, 1)[0]
        weight = F.avg_pool2d(valid[None, None], 3, 1, 1)[0, 0]
        grow = (valid == 0) & (weight > 0)
        tex = torch.where(grow[None], total / weight.clamp(min=1e-6)[None], tex)
        valid = torch.where(grow, torch.ones_like(valid), valid)
    return tex


class ReferenceTexture:
    """UV atlas of the reference person (mip pyramid) plus which texels the reference photo actually showed."""

    def __init__(self, model: BodyModel, image: np.ndarray, track: EHMTrack, size: int = 1024,
                 device: torch.device | str | None = None) -> None:
        device = torch.device(device) if device is not None else model.device
        if track.image_size != tuple(image.shape[:2]):
            raise InputError(f"Reference track is for a {track.image_size} image, the photo is {image.shape[:2]}")
        track = track.frames(0, 1)
        scale = min(1.0, MAX_REFERENCE_SIDE / max(image.shape[:2]))
        if scale < 1.0:  # same view, fewer pixels: scale the photo and the focal length together
            image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                               interpolation=cv2.INTER_AREA)
            track = track.replace(focal=track.focal * scale, image_size=image.shape[:2])
        photo = torch.from_numpy(image).to(device).permute(2, 0, 1).float() / 255.0
        faces = model.faces.to(device)
        face_uvs = model.face_uvs.to(device)
        labels = model.part_labels.to(device)

        vertices = posed_vertices(model, track).to(device)
        points = screen_points(vertices, track)
        zbuffer = rasterize(points, faces, track.image_size, cull_backfaces=True).depth[0]
        cam = to_camera(vertices, track.cam_R.to(device), track.cam_t.to(device))[0]

        # Vertex colours where the photo shows the vertex, then spread to the rest (same part first, then anywhere).
        facing = self._facing(cam, faces)  # [F]
        vertex_facing = torch.zeros(cam.shape[0], device=device).index_reduce_(
            0, faces.reshape(-1), facing.repeat_interleave(3), "amax", include_self=False)
        soft = kornia.filters.gaussian_blur2d(photo[None], (9, 9), (2.0, 2.0))[0]
        vertex_seen = self._visible(points[0], zbuffer) & (vertex_facing > 0.3)
        if not vertex_seen.any():
            raise InputError("The fitted reference mesh is not visible in the reference image (bad track?)")
        colours = torch.zeros(cam.shape[0], 3, device=device)
        colours[vertex_seen] = _sample_image(soft, points[0, vertex_seen, :2])
        colours, known = _spread_colours(colours, vertex_seen, _vertex_adjacency(faces, cam.shape[0], labels))
        colours, known = _spread_colours(colours, known, _vertex_adjacency(faces, cam.shape[0], None))
        colours[~known] = 0.5

        # Texels: photo colour where seen (soft weight at grazing angles), spread vertex colour elsewhere.
        uv_points = torch.cat([model.uvs.to(device) * size, torch.ones_like(model.uvs[:, :1]).to(device)], dim=-1)
        atlas = rasterize(uv_points[None], face_uvs, (size, size))
        covered = atlas.face_id[0] >= 0
        texel_face = atlas.face_id[0][covered]
        texel_bary = atlas.bary[0][covered]
        texel_cam = (cam[faces[texel_face]] * texel_bary[..., None]).sum(dim=1)
        texel_px = project_camera_points(texel_cam[None], track.focal.to(device), track.image_size)[0]
        texel_points = torch.cat([texel_px, texel_cam[:, 2:3]], dim=-1)
        weight = self._visible(texel_points, zbuffer).float() * ((facing[texel_face] - 0.15) / 0.25).clamp(0, 1)
        seen_colour = _sample_image(photo, texel_px)
        fill_colour = (colours[faces[texel_face]] * texel_bary[..., None]).sum(dim=1)
        texel_colour = weight[:, None] * seen_colour + (1.0 - weight[:, None]) * fill_colour
        texture = torch.zeros(3, size, size, device=device)
        texture[:, covered] = texel_colour.t()
        texture = _fill_gutters(texture, covered)

        self.seen = torch.zeros(size, size, device=device)
        self.seen[covered] = weight
        self.vertex_seen = vertex_seen
        self.levels = [texture]
        while self.levels[-1].shape[-1] > 64:
            self.levels.append(F.avg_pool2d(self.levels[-1][None], 2)[0])
        self.uv_area = self._uv_area(model.uvs.to(device), face_uvs) * size * size  # texels per face at level 0

    @staticmethod
    def _facing(cam: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """Cosine between each face's outward normal and the direction to the camera ([F], > 0 means facing)."""
        normals = _face_normals(cam, faces)
        centres = cam[faces].mean(dim=1)
        return -(normals * F.normalize(centres, dim=-1)).sum(dim=-1)

    @staticmethod
    def _visible(points: torch.Tensor, zbuffer: torch.Tensor, tolerance: float = 0.02) -> torch.Tensor:
        """Points (x_px, y_px, z) not hidden behind the z-buffer's surface by more than ``tolerance`` metres."""
        h, w = zbuffer.shape
        col = points[:, 0].floor().long().clamp(0, w - 1)
        row = points[:, 1].floor().long().clamp(0, h - 1)
        return points[:, 2] <= zbuffer[row, col] + tolerance

    @staticmethod
    def _uv_area(uvs: torch.Tensor, face_uvs: torch.Tensor) -> torch.Tensor:
        tri = uvs[face_uvs]
        d1, d2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        return 0.5 * (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]).abs()

    def sample(self, uv: torch.Tensor, texel_ratio: torch.Tensor) -> torch.Tensor:
        """Trilinear (mip-mapped) colours [N, 3] at ``uv`` [N, 2] for pixels showing ``texel_ratio`` [N] texels each.

        The mip level follows the texel-to-pixel area ratio of the pixel's face, so a face that is small on screen
        reads a pre-averaged level instead of aliasing, and a large one reads full detail.
        """
        lod = (0.5 * torch.log2(texel_ratio.clamp(min=1.0))).clamp(max=len(self.levels) - 1)
        low = lod.floor()
        frac = (lod - low)[:, None]
        grid = (uv * 2.0 - 1.0).view(1, 1, -1, 2)
        out = uv.new_zeros(uv.shape[0], 3)
        for index, level in enumerate(self.levels):
            pick = (low == index) | ((low + 1 == index) & (frac[:, 0] > 0))
            if not bool(pick.any()):
                continue
            weight = torch.where((low == index)[:, None], 1.0 - frac, frac)[pick]
            colour = F.grid_sample(level[None], grid[:, :, pick], mode="bilinear", padding_mode="border",
                                   align_corners=False)[0, :, 0].t()
            out[pick] += colour * weight
        return out


# ---------------------------------------------------------------------------------------------------- background
def remove_person(image: np.ndarray, mask: np.ndarray, dilate_frac: float = 0.03, work_side: int = 384) -> np.ndarray:
    """The image with the masked person inpainted away (OpenCV Telea at reduced resolution, pasted back softly).

    ``mask`` is dilated by ``dilate_frac`` of the person's height: the fitted body has no hair or loose clothes.
    """
    mask = np.asarray(mask).astype(np.uint8)
    if not mask.any():
        return image.copy()
    rows = np.nonzero(mask.any(axis=1))[0]
    radius = max(2, round(dilate_frac * (rows[-1] - rows[0] + 1)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    grown = cv2.dilate(mask, kernel)
    h, w = image.shape[:2]
    scale = min(1.0, work_side / max(h, w))
    small_size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(grown * 255, small_size, interpolation=cv2.INTER_NEAREST)
    small_mask = cv2.dilate(small_mask, np.ones((3, 3), np.uint8))
    filled = cv2.inpaint(small, small_mask, max(3, round(radius * scale)), cv2.INPAINT_TELEA)
    filled = cv2.resize(filled, (w, h), interpolation=cv2.INTER_CUBIC)
    alpha = cv2.GaussianBlur(grown.astype(np.float32), (0, 0), max(1.0, radius / 3))[..., None]
    alpha = np.clip(alpha * 2.0, 0.0, 1.0)  # fully replaced inside the grown mask, soft just outside it
    return (alpha * filled + (1.0 - alpha) * image).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- animator
class PreviewAnimator:
    """Renders output frames for batches of a (retargeted, aligned) track.

    ``reference_image``/``reference_track``: the photo at its own resolution and its one-frame fit (texture source).
    ``background``: the output-size image the person is composited over (e.g. :func:`remove_person` of the aligned
    reference). Frames come out as float [B, H, W, 3] in 0..1 on ``device``.
    """

    def __init__(self, model: BodyModel, reference_image: np.ndarray, reference_track: EHMTrack,
                 background: np.ndarray, texture_size: int = 1024, feather: float = 1.0,
                 device: torch.device | str | None = None) -> None:
        self.model = model
        self.device = torch.device(device) if device is not None else model.device
        self.texture = ReferenceTexture(model, reference_image, reference_track, texture_size, self.device)
        self.background = torch.from_numpy(np.ascontiguousarray(background)).to(self.device).float() / 255.0
        self.feather = feather
        self.faces = model.faces.to(self.device)
        self.face_uvs = model.face_uvs.to(self.device)
        self.uvs = model.uvs.to(self.device)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.background.shape[0]), int(self.background.shape[1])

    def render(self, track: EHMTrack, vertices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [B, H, W, 3] and the person's alpha [B, H, W] for every frame of ``track`` (one batch).

        Texturing and feathering run only inside the box around the person (most of a frame is background).
        """
        if track.image_size != self.image_size:
            raise InputError(f"Track frames are {track.image_size}, the background is {self.image_size}")
        if vertices is None:
            vertices = posed_vertices(self.model, track)
        points = screen_points(vertices.to(self.device), track)
        fragments = rasterize(points, self.faces, self.image_size, cull_backfaces=True)
        batch, height, width = fragments.face_id.shape
        frames = self.background.permute(2, 0, 1)[None].repeat(batch, 1, 1, 1)
        alpha_full = frames.new_zeros(batch, height, width)
        covered_any = fragments.mask.any(dim=0)
        if not bool(covered_any.any()):
            return frames.permute(0, 2, 3, 1), alpha_full
        margin = 2 * math.ceil(2.5 * self.feather) + 2
        rows = covered_any.any(dim=1).nonzero()[:, 0]
        cols = covered_any.any(dim=0).nonzero()[:, 0]
        y0, y1 = max(0, int(rows[0]) - margin), min(height, int(rows[-1]) + 1 + margin)
        x0, x1 = max(0, int(cols[0]) - margin), min(width, int(cols[-1]) + 1 + margin)
        crop = Fragments(face_id=fragments.face_id[:, y0:y1, x0:x1], bary=fragments.bary[:, y0:y1, x0:x1],
                         depth=fragments.depth[:, y0:y1, x0:x1])

        tri = points[:, self.faces, :2]  # pixel area of every face in every frame → texels per pixel
        d1, d2 = tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]
        screen_area = 0.5 * (d1[..., 0] * d2[..., 1] - d1[..., 1] * d2[..., 0]).abs()
        flat = crop.face_id.reshape(-1)
        covered = (flat >= 0).nonzero()[:, 0]
        face = flat[covered]
        frame = covered // ((y1 - y0) * (x1 - x0))
        uv = interpolate(crop, self.face_uvs, self.uvs).reshape(-1, 2)[covered]
        ratio = self.texture.uv_area[face] / screen_area[frame, face].clamp(min=1e-3)
        colour = frames.new_zeros(batch * (y1 - y0) * (x1 - x0), 3)
        colour[covered] = self.texture.sample(uv, ratio)
        colour = colour.view(batch, y1 - y0, x1 - x0, 3).permute(0, 3, 1, 2)
        alpha, colour = self._feather(crop.mask.float()[:, None], colour)
        background = frames[:, :, y0:y1, x0:x1]
        frames[:, :, y0:y1, x0:x1] = alpha * colour + (1.0 - alpha) * background
        alpha_full[:, y0:y1, x0:x1] = alpha[:, 0]
        return frames.permute(0, 2, 3, 1).clamp(0.0, 1.0), alpha_full
    def _feather(self, mask: torch.Tensor, colour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft alpha at the silhouette, and colours extended just outside it so the soft edge has no dark fringe."""
        if self.feather <= 0:
            return mask, colour
        k = 2 * math.ceil(2.5 * self.feather) + 1
        blur = lambda t: kornia.filters.gaussian_blur2d(t, (k, k), (self.feather, self.feather))  # noqa: E731
        alpha = blur(mask)
        spread = blur(colour * mask) / alpha.clamp(min=1e-4)
        colour = torch.where(mask > 0, colour, spread)
        return alpha, colour
