"""Spatial Align: put the retargeted performance where the reference person stands in the reference image.

Both tracks are first expressed at the output size (cover + centre crop, the renderer's convention: the focal
length scales, the principal point stays at the centre). At the anchor frame the retargeted body is then turned,
in camera space, to face the camera as the reference body does (``match_orientation``: a driver filmed from below
would otherwise lean back over the reference photo), its pelvis is moved onto the reference body's pelvis and the
focal length is set to the reference's. This is an exact perspective placement (no 2D approximation): with the
same body shape and the same pose the two renders coincide, and the driver's later turns and camera motion (zoom,
dolly, pan) are kept relative to the anchor frame.
The reference image gets the same cover + crop warp (kornia), and its person mask comes from the reference mesh.
"""
from __future__ import annotations

from dataclasses import dataclass

import kornia
import numpy as np
import roma
import torch

from .body.model import BodyModel
from .body.track import EHMTrack
from .errors import InputError
from .render.renderer import output_focal, rasterize_track


@dataclass
class AlignResult:
    track: EHMTrack  # the retargeted track in output-image coordinates (image_size = (height, width))
    reference_image: np.ndarray  # [height, width, 3] uint8: the reference photo under the same cover + crop
    reference_mask: torch.Tensor  # [height, width] float 0/1: the reference person's silhouette in that image
    scale: float  # reference image → output pixels
    offset: tuple[float, float]  # (x, y) pixels added after scaling


def at_output_size(track: EHMTrack, height: int, width: int) -> EHMTrack:
    """The same views re-expressed for a ``height × width`` output (cover + centre crop)."""
    return track.replace(focal=output_focal(track, height, width), image_size=(height, width))


def pelvis_camera(track: EHMTrack) -> torch.Tensor:
    """[T, 3] the body origin (pelvis) in camera coordinates."""
    return (track.cam_R @ track.translation[:, :, None])[:, :, 0] + track.cam_t


def cover_transform(src_size: tuple[int, int], height: int, width: int) -> tuple[float, tuple[float, float]]:
    """Scale and offset (continuous pixel coordinates) of the cover + centre-crop resize of ``src_size`` (H, W)."""
    scale = max(width / src_size[1], height / src_size[0])
    return scale, (width / 2.0 - scale * src_size[1] / 2.0, height / 2.0 - scale * src_size[0] / 2.0)


def warp_image(image: np.ndarray, scale: float, offset: tuple[float, float], height: int, width: int) -> np.ndarray:
    """``image`` [h, w, 3] uint8 under x' = scale · x + offset (continuous coords) into ``height × width``."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    if scale < 1.0:  # low-pass before shrinking so edges do not alias
        sigma = 0.5 / scale
        size = 2 * int(np.ceil(2.5 * sigma)) + 1
        tensor = kornia.filters.gaussian_blur2d(tensor, (size, size), (sigma, sigma), border_type="replicate")
    # Pixel-index coordinates (centres at integers): x_idx' = s·x_idx + (offset + 0.5·s − 0.5).
    matrix = torch.tensor([[[scale, 0.0, offset[0] + 0.5 * scale - 0.5],
                            [0.0, scale, offset[1] + 0.5 * scale - 0.5]]])
    warped = kornia.geometry.transform.warp_affine(tensor, matrix, (height, width), mode="bilinear",
                                                   padding_mode="border", align_corners=True)
    return (warped[0].permute(1, 2, 0).clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()


def camera_orientation(track: EHMTrack) -> torch.Tensor:
    """[T, 3, 3] the body's orientation in camera coordinates."""
    return track.cam_R @ roma.rotvec_to_rotmat(track.global_orient)


def spatial_align(model: BodyModel, reference_image: np.ndarray, reference_track: EHMTrack, track: EHMTrack,
                  width: int, height: int, anchor: int = 0, reference_frame: int = 0,
                  match_orientation: bool = True) -> AlignResult:
    """Place ``track`` (usually the retargeted one) where ``reference_track`` stands, at ``width × height``.

    ``anchor``: frame of ``track`` that is aligned; ``reference_frame``: frame of the reference track (0 for a photo).
    ``match_orientation``: turn the whole performance so that at the anchor the body faces the camera like the
    reference body (off: keep the driver's view of the body, e.g. filmed from below).
    """
    if reference_image.ndim != 3 or reference_image.shape[2] != 3 or reference_image.dtype != np.uint8:
        raise InputError(f"reference image must be RGB uint8 [H, W, 3], got {reference_image.shape} "
                         f"{reference_image.dtype}")
    if not (0 <= anchor < track.num_frames and 0 <= reference_frame < reference_track.num_frames):
        raise InputError(f"anchor frame {anchor} / reference frame {reference_frame} out of range")
    image_h, image_w = reference_image.shape[:2]
    track_h, track_w = reference_track.image_size
    if abs(image_w / image_h - track_w / track_h) > 0.01 * track_w / track_h + 1.0 / min(track_h, track_w):
        # Any resolution of the tracked picture works (the cover transform is resolution-free), a crop does not.
        raise InputError(f"reference image is {image_w}x{image_h} but its track was made on {track_w}x{track_h} "
                         f"images (a different aspect ratio: was the photo cropped?)")
    track.check_backend(model.backend)
    reference_track.check_backend(model.backend)
    ref = at_output_size(reference_track.frames(reference_frame, reference_frame + 1), height, width)
    out = at_output_size(track, height, width).to(ref.device)
    if match_orientation:  # turn every camera about its centre by the anchor's orientation difference
        turn = camera_orientation(ref)[0] @ camera_orientation(out)[anchor].T
        out = out.replace(cam_R=turn @ out.cam_R, cam_t=out.cam_t @ turn.T)
    # Exact 3D placement at the anchor: same focal as the reference, pelvis at the reference pelvis.
    zoom = ref.focal[0] / out.focal[anchor]
    delta = pelvis_camera(ref)[0] - pelvis_camera(out)[anchor]
    aligned = out.replace(focal=out.focal * zoom, cam_t=out.cam_t + delta,
                          meta={**out.meta, "align": f"anchor={anchor}, output={width}x{height}, "
                                                     f"match_orientation={match_orientation}"})
    scale, offset = cover_transform((image_h, image_w), height, width)
    image = warp_image(reference_image, scale, offset, height, width)
    _, _, fragments = rasterize_track(model, ref, ref.focal, (height, width))
    return AlignResult(track=aligned, reference_image=image, reference_mask=fragments.mask[0].float(),
                       scale=scale, offset=offset)
