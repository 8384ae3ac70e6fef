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

from ..body.camera import project_camera_points
from ..body.model import BodyModel
from ..body.raster import Fragments, interpolate, rasterize
from ..body.track import LANDMARK_GROUPS, EHMTrack
from ..errors import InputError
from ..mediapipe_import import import_mediapipe
from ..render.renderer import rasterize_track

MAX_REFERENCE_SIDE = 2048  # larger photos are reduced first: the atlas cannot hold more detail than this anyway
OCCLUSION_MARGIN = 0.015  # of the photo's long side: how far fitted limbs may sit from the photographed ones


def _project(model: BodyModel, track: EHMTrack, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, Fragments]:
    """Camera-space vertices [B, V, 3], pixel positions [B, V, 2] and the z-buffer of ``track`` in its own frame."""
    track = track.to(device)
    _, cam, fragments = rasterize_track(model, track, track.focal, track.image_size, device)
    return cam, project_camera_points(cam, track.focal, track.image_size), fragments


def segment_person(image: np.ndarray) -> np.ndarray | None:
    """Soft person segmentation [H, W] in 0..1 (MediaPipe selfie segmentation, shipped in the wheel), or None when
    this mediapipe has no legacy solutions (then the fitted mesh alone marks the person)."""
    try:
        solution = import_mediapipe().solutions.selfie_segmentation
    except (AttributeError, ImportError, InputError):
        return None
    with solution.SelfieSegmentation(model_selection=0) as segmenter:
        result = segmenter.process(np.ascontiguousarray(image))
    if result.segmentation_mask is None:
        return None
    return np.clip(result.segmentation_mask, 0.0, 1.0).astype(np.float32)


def person_region(mesh_mask: np.ndarray, segmentation: np.ndarray | None) -> np.ndarray:
    """Where the reference person is: the fitted mesh plus the segmented blobs that touch it (hair and loose clothes
    lie outside the naked body mesh; other people in the photo do not touch it)."""
    mesh_mask = np.asarray(mesh_mask) > 0
    if segmentation is None:
        return mesh_mask
    count, labels = cv2.connectedComponents((segmentation > 0.5).astype(np.uint8))
    touching = np.unique(labels[mesh_mask & (labels > 0)])
    return mesh_mask | np.isin(labels, touching)


# ---------------------------------------------------------------------------------------------------- texture
def _vertex_adjacency(faces: torch.Tensor, num_vertices: int, labels: torch.Tensor | None) -> torch.Tensor:
    """Sparse symmetric [V, V] adjacency of mesh edges (only edges inside one part when ``labels`` is given)."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = torch.cat([edges, edges.flip(1)])
    if labels is not None:
        edges = edges[labels[edges[:, 0]] == labels[edges[:, 1]]]
    values = torch.ones(edges.shape[0], device=faces.device)
    adj = torch.sparse_coo_tensor(edges.t(), values, (num_vertices, num_vertices), check_invariants=True).coalesce()
    return torch.sparse_coo_tensor(adj.indices(), torch.ones_like(adj.values()), adj.shape,
                                   check_invariants=True).coalesce()


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


class _OccluderDepth:
    """Per photo pixel: the nearest surface depth, and the nearest depth of each *other* body part within
    ``radius`` pixels (min filters per part; the two smallest are kept so "any part but mine" is one lookup)."""

    def __init__(self, face_id: torch.Tensor, depth: torch.Tensor, face_parts: torch.Tensor, parts: int,
                 radius: int, tolerance: float = 0.02, margin_tolerance: float = 0.06) -> None:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        part_map = torch.where(face_id >= 0, face_parts[face_id.clamp(min=0)], -1).cpu().numpy()
        far = np.float32(1e9)
        z = np.where(np.isfinite(depth.cpu().numpy()), depth.cpu().numpy(), far).astype(np.float32)
        best = np.full(z.shape, far, np.float32)
        second = np.full(z.shape, far, np.float32)
        best_part = np.full(z.shape, -1, np.int64)
        for part in range(parts):
            if not (part_map == part).any():
                continue
            near = cv2.erode(np.where(part_map == part, z, far), kernel)  # min filter
            closer = near < best
            second = np.where(closer, best, np.minimum(second, near))
            best_part = np.where(closer, part, best_part)
            best = np.where(closer, near, best)
        device = depth.device
        self.depth = torch.from_numpy(z).to(device)
        self.best, self.second = torch.from_numpy(best).to(device), torch.from_numpy(second).to(device)
        self.best_part = torch.from_numpy(best_part).to(device)
        self.tolerance = tolerance
        self.margin_tolerance = margin_tolerance  # a limb must be clearly in front (an arm beside the chest is not)

    def visible(self, points: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
        """[N] bool for points (x_px, y_px, z) of body ``parts`` [N]."""
        h, w = self.depth.shape
        col = points[:, 0].floor().long().clamp(0, w - 1)
        row = points[:, 1].floor().long().clamp(0, h - 1)
        z = points[:, 2]
        foreign = torch.where(self.best_part[row, col] == parts, self.second[row, col], self.best[row, col])
        return (z - self.tolerance <= self.depth[row, col]) & (z - self.margin_tolerance <= foreign)


class _HandRegions:
    """Where the detector saw the hands in the photo (convex hull of the 21 landmarks, grown by a quarter of the
    hand's size). Hands are small and often rest on the body, where a slightly misfitted mesh hand would trade
    colours with the hip or chest: hand texels may only come from these regions, other parts' never do (forearms
    excepted, they join the hand)."""

    def __init__(self, track: EHMTrack, part_names: list[str], device: torch.device) -> None:
        self.region = None
        self.hand_parts = torch.tensor([i for i, n in enumerate(part_names) if n.startswith("hand")], device=device)
        self.arm_parts = torch.tensor([i for i, n in enumerate(part_names) if n.startswith("lower_arm")],
                                      device=device)
        if track.landmarks2d is None:
            return
        region = np.zeros(track.image_size, np.uint8)
        for group in ("left_hand", "right_hand"):
            a, b = LANDMARK_GROUPS[group]
            confidence = track.confidence[0, a:b].cpu().numpy()
            if confidence.mean() < 0.5:
                continue
            points = track.landmarks2d[0, a:b].cpu().numpy()[confidence >= 0.5].astype(np.float32)
            hull = cv2.convexHull(points)
            grow = max(2, round(0.25 * float(np.linalg.norm(points.max(0) - points.min(0)))))
            hand = np.zeros_like(region)
            cv2.fillConvexPoly(hand, np.round(hull).astype(np.int32), 1)
            region |= cv2.dilate(hand, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1,) * 2))
        if region.any():
            self.region = torch.from_numpy(region.astype(np.float32)).to(device)[None]

    def allows(self, pixels: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
        """[N] bool: may the photo colour at ``pixels`` [N, 2] be used for surface points of ``parts`` [N]?"""
        if self.region is None:
            return torch.ones_like(parts, dtype=torch.bool)
        in_hand = _sample_image(self.region, pixels)[:, 0] > 0.5
        is_hand = torch.isin(parts, self.hand_parts)
        return torch.where(is_hand, in_hand, ~in_hand | torch.isin(parts, self.arm_parts))


class ReferenceTexture:
    """UV atlas of the reference person (mip pyramid) plus which texels the reference photo actually showed."""

    def __init__(self, model: BodyModel, image: np.ndarray, track: EHMTrack, size: int = 1024,
                 segmentation: np.ndarray | None = None, device: torch.device | str | None = None) -> None:
        device = torch.device(device) if device is not None else model.device
        if track.image_size != tuple(image.shape[:2]):
            raise InputError(f"Reference track is for a {track.image_size} image, the photo is {image.shape[:2]}")
        track = track.frames(0, 1)
        scale = min(1.0, MAX_REFERENCE_SIDE / max(image.shape[:2]))
        if scale < 1.0:  # same view, fewer pixels: scale the photo and the focal length together
            size_wh = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            image = cv2.resize(image, size_wh, interpolation=cv2.INTER_AREA)
            if segmentation is not None:
                segmentation = cv2.resize(segmentation, size_wh, interpolation=cv2.INTER_LINEAR)
            track = track.replace(focal=track.focal * scale, image_size=image.shape[:2])
        photo = torch.from_numpy(image).to(device).permute(2, 0, 1).float() / 255.0
        faces = model.faces.to(device)
        face_uvs = model.face_uvs.to(device)
        labels = model.part_labels.to(device)

        cam, pixels, fragments = _project(model, track, device)
        cam, pixels, zbuffer = cam[0], pixels[0], fragments.depth[0]
        # Photo pixels that show the person (the segmentation when there is one: the fitted mesh may stick out over
        # the background), shrunk by 2 px because silhouette pixels mix in the background.
        mesh = fragments.mask[0].cpu().numpy()
        shown = mesh
        if segmentation is not None and (segmentation[mesh] > 0.5).mean() > 0.5:  # trusted only where it agrees
            shown = segmentation > 0.5
        region = cv2.erode(shown.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(np.float32)
        inside = torch.from_numpy(region).to(device)[None]

        # A surface point counts as seen when nothing is in front of it at its pixel, and no other body part is in
        # front of it nearby: the fitted limbs are a few pixels off the photographed ones, so without that margin a
        # hand resting on a hip would leave its colours on the hip.
        radius = max(2, round(OCCLUSION_MARGIN * max(track.image_size)))
        occluders = _OccluderDepth(fragments.face_id[0], zbuffer, labels[faces[:, 0]], len(model.part_names), radius)

        # Vertex colours where the photo clearly shows the vertex, then spread to the rest (same part first).
        facing = self._facing(cam, faces)  # [F]
        vertex_facing = torch.zeros(cam.shape[0], device=device).scatter_reduce_(
            0, faces.reshape(-1), facing.repeat_interleave(3), "amax", include_self=False)
        soft = kornia.filters.gaussian_blur2d(photo[None], (9, 9), (2.0, 2.0))[0]
        vertex_points = torch.cat([pixels, cam[:, 2:3]], dim=-1)
        vertex_seen = occluders.visible(vertex_points, labels) & (vertex_facing > 0.5)
        hands = _HandRegions(track, model.part_names, device)
        vertex_seen &= hands.allows(pixels, labels)
        vertex_seen &= _sample_image(inside, pixels)[:, 0] > 0.99
        if not vertex_seen.any():
            raise InputError("The fitted reference mesh is not visible in the reference image (bad track?)")
        colours = torch.zeros(cam.shape[0], 3, device=device)
        colours[vertex_seen] = _sample_image(soft, pixels[vertex_seen])
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
        texel_part = labels[faces[texel_face, 0]]
        weight = occluders.visible(texel_points, texel_part).float()
        weight *= hands.allows(texel_px, texel_part).float()
        weight *= ((facing[texel_face] - 0.15) / 0.25).clamp(0, 1)
        weight *= _sample_image(inside, texel_px)[:, 0]
        seen_colour = _sample_image(photo, texel_px)
        fill_colour = (colours[faces[texel_face]] * texel_bary[..., None]).sum(dim=1)
        texel_colour = weight[:, None] * seen_colour + (1.0 - weight[:, None]) * fill_colour
        texture = torch.zeros(3, size, size, device=device)
        texture[:, covered] = texel_colour.t()
        texture = _fill_gutters(texture, covered)

        self.seen = torch.zeros(size, size, device=device)  # how much of each texel came from the photo
        self.seen[covered] = weight
        self.levels = 1 + max(0, int(math.log2(size / 64)))
        self.mip_chain = self._pack_mips(texture, self.levels)
        self.uv_area = self._uv_area(model.uvs.to(device), face_uvs) * size * size  # texels per face at level 0

    @staticmethod
    def _facing(cam: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """Cosine between each face's outward normal and the direction to the camera ([F], > 0 means facing)."""
        normals = _face_normals(cam, faces)
        centres = cam[faces].mean(dim=1)
        return -(normals * F.normalize(centres, dim=-1)).sum(dim=-1)

    @staticmethod
    def _uv_area(uvs: torch.Tensor, face_uvs: torch.Tensor) -> torch.Tensor:
        tri = uvs[face_uvs]
        d1, d2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        return 0.5 * (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]).abs()

    @staticmethod
    def _pack_mips(texture: torch.Tensor, levels: int) -> torch.Tensor:
        """All mip levels in one image [3, S, 1.5 S]: level 0 on the left, level k >= 1 stacked in the right column
        from the top, so one ``grid_sample`` call can read any level."""
        size = texture.shape[-1]
        chain = texture.new_zeros(3, size, size + size // 2)
        chain[:, :, :size] = texture
        level, top = texture, 0
        for _ in range(1, levels):
            level = F.avg_pool2d(level[None], 2)[0]
            chain[:, top:top + level.shape[-1], size:size + level.shape[-1]] = level
            top += level.shape[-1]
        return chain

    def _chain_grid(self, uv: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Normalised ``grid_sample`` coordinates of ``uv`` inside mip ``level`` of the packed chain, kept half a
        texel inside that level so bilinear filtering never reads its neighbour."""
        size = self.mip_chain.shape[1]
        side = size / torch.exp2(level)
        x0 = torch.where(level > 0, torch.full_like(level, float(size)), torch.zeros_like(level))
        y0 = torch.where(level > 0, size - 2.0 * side, torch.zeros_like(level))  # total side of the levels above
        xy = (uv * side[:, None]).clamp(min=0.5)
        xy = torch.minimum(xy, side[:, None] - 0.5) + torch.stack([x0, y0], dim=-1)
        scale = xy.new_tensor([2.0 / self.mip_chain.shape[2], 2.0 / size])
        return xy * scale - 1.0

    def sample(self, uv: torch.Tensor, texel_ratio: torch.Tensor) -> torch.Tensor:
        """Trilinear (mip-mapped) colours [N, 3] at ``uv`` [N, 2] for pixels showing ``texel_ratio`` [N] texels each.

        The mip level follows the texel-to-pixel area ratio of the pixel's face, so a face that is small on screen
        reads a pre-averaged level instead of aliasing, and a large one reads full detail.
        """
        lod = (0.5 * torch.log2(texel_ratio.clamp(min=1.0))).clamp(max=self.levels - 1)
        low = lod.floor()
        high = (low + 1).clamp(max=self.levels - 1)
        grid = torch.cat([self._chain_grid(uv, low), self._chain_grid(uv, high)]).view(1, 1, -1, 2)
        colours = F.grid_sample(self.mip_chain[None], grid, mode="bilinear", align_corners=False)[0, :, 0].t()
        frac = (lod - low)[:, None]
        return colours[: uv.shape[0]] * (1.0 - frac) + colours[uv.shape[0]:] * frac


# ---------------------------------------------------------------------------------------------------- background
def remove_person(image: np.ndarray, mask: np.ndarray, dilate_frac: float = 0.02, work_side: int = 384) -> np.ndarray:
    """The image with the masked person inpainted away (OpenCV Telea at reduced resolution, pasted back softly).

    ``mask`` (e.g. :func:`person_region`) is dilated by ``dilate_frac`` of the person's height to swallow the soft
    edge, hair strands and the contact shadow.
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


def background_plate(image: np.ndarray, mesh_mask: np.ndarray, segment: bool = True) -> np.ndarray:
    """The reference image (at the output size) with its person removed: the fitted mesh's mask plus the segmented
    hair and clothes that touch it, inpainted (what the animated person is composited over)."""
    segmentation = segment_person(image) if segment else None
    return remove_person(image, person_region(np.asarray(mesh_mask) > 0.5, segmentation))


# ---------------------------------------------------------------------------------------------------- animator
class PreviewAnimator:
    """Renders output frames for batches of a (retargeted, aligned) track.

    ``reference_image``/``reference_track``: the photo at its own resolution and its one-frame fit (texture source);
    ``segment``: segment the person in the photo (:func:`segment_person`), which keeps background out of the
    texture at the silhouette.
    ``background``: the output-size image the person is composited over (e.g. :func:`remove_person` of the aligned
    reference). Frames come out as float [B, H, W, 3] in 0..1 on ``device``.
    """

    def __init__(self, model: BodyModel, reference_image: np.ndarray, reference_track: EHMTrack,
                 background: np.ndarray, texture_size: int = 1024, feather: float = 1.0,
                 segment: bool = True, device: torch.device | str | None = None) -> None:
        self.model = model
        self.device = torch.device(device) if device is not None else model.device
        segmentation = segment_person(reference_image) if segment else None
        self.texture = ReferenceTexture(model, reference_image, reference_track, texture_size, segmentation,
                                        self.device)
        self.background = torch.from_numpy(np.ascontiguousarray(background)).to(self.device).float() / 255.0
        self.feather = feather
        self.faces = model.faces.to(self.device)
        self.face_uvs = model.face_uvs.to(self.device)
        self.uvs = model.uvs.to(self.device)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.background.shape[0]), int(self.background.shape[1])

    def render(self, track: EHMTrack) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [B, H, W, 3] and the person's alpha [B, H, W] for every frame of ``track`` (one batch).

        Texturing and feathering run only inside the box around the person (most of a frame is background).
        """
        if track.image_size != self.image_size:
            raise InputError(f"Track frames are {track.image_size}, the background is {self.image_size}")
        cam, pixels, fragments = _project(self.model, track, self.device)
        batch, height, width = fragments.face_id.shape
        frames = self.background[None].repeat(batch, 1, 1, 1)
        alpha_full = frames.new_zeros(batch, height, width)
        covered_any = fragments.mask.any(dim=0)
        if not bool(covered_any.any()):
            return frames, alpha_full
        margin = self._radius() + 1
        rows = covered_any.any(dim=1).nonzero()[:, 0]
        cols = covered_any.any(dim=0).nonzero()[:, 0]
        y0, y1 = max(0, int(rows[0]) - margin), min(height, int(rows[-1]) + 1 + margin)
        x0, x1 = max(0, int(cols[0]) - margin), min(width, int(cols[-1]) + 1 + margin)
        crop = Fragments(face_id=fragments.face_id[:, y0:y1, x0:x1], bary=fragments.bary[:, y0:y1, x0:x1],
                         depth=fragments.depth[:, y0:y1, x0:x1])

        tri = pixels[:, self.faces]  # pixel area of every face in every frame → texels per pixel
        d1, d2 = tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]
        screen_area = 0.5 * (d1[..., 0] * d2[..., 1] - d1[..., 1] * d2[..., 0]).abs()
        flat = crop.face_id.reshape(-1)
        covered = (flat >= 0).nonzero()[:, 0]
        face = flat[covered]
        frame = covered // ((y1 - y0) * (x1 - x0))
        uv = interpolate(crop, self.face_uvs, self.uvs).reshape(-1, 2)[covered]
        ratio = self.texture.uv_area[face] / screen_area[frame, face].clamp(min=1e-3)
        layer = frames.new_zeros(batch * (y1 - y0) * (x1 - x0), 4)  # premultiplied colour + coverage
        layer[covered, :3] = self.texture.sample(uv, ratio)
        layer[covered, 3] = 1.0
        layer = self._feather(layer.view(batch, y1 - y0, x1 - x0, 4))
        alpha = layer[..., 3:]
        background = frames[:, y0:y1, x0:x1]
        frames[:, y0:y1, x0:x1] = layer[..., :3] + (1.0 - alpha) * background
        alpha_full[:, y0:y1, x0:x1] = alpha[..., 0]
        return frames.clamp_(0.0, 1.0), alpha_full

    def _radius(self) -> int:
        return math.ceil(2.0 * self.feather) if self.feather > 0 else 0

    def _feather(self, layer: torch.Tensor) -> torch.Tensor:
        """Soft silhouette: pixels just outside the person get a Gaussian-weighted spill of the premultiplied layer
        [B, h, w, 4] (colour never darkens, alpha falls off over ~2 px); the interior stays sharp and opaque.
        Only that thin outer band is computed, which keeps the cost tiny compared with blurring whole frames."""
        radius = self._radius()
        if radius == 0:
            return layer
        taps = torch.arange(-radius, radius + 1, device=layer.device, dtype=layer.dtype)
        kernel = torch.exp(-0.5 * (taps / self.feather) ** 2)
        kernel = torch.outer(kernel, kernel) / kernel.sum() ** 2
        solid = layer[..., 3] > 0
        near = F.max_pool2d(solid[:, None].float(), 2 * radius + 1, 1, radius)[:, 0] > 0
        b, y, x = (near & ~solid).nonzero(as_tuple=True)
        padded = F.pad(layer, (0, 0, radius, radius, radius, radius))
        spill = layer.new_zeros(b.shape[0], layer.shape[-1])
        for dy in range(2 * radius + 1):
            for dx in range(2 * radius + 1):
                spill += kernel[dy, dx] * padded[b, y + dy, x + dx]
        layer = layer.clone()
        layer[b, y, x] = spill
        return layer
