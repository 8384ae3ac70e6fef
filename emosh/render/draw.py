"""Keypoint drawing in the OpenPose/DWPose style (the fine half of the hybrid signal, and the keypoints-only
control for Wan-Animate / UniAnimate / DWPose-trained models).

Follows ``shared/docs/pose-drawing.md``: limbs are filled ellipses at 0.6 × palette colour, joints filled circles,
hand bones lines in HSV colours with blue joints, integer-truncated coordinates, no anti-aliasing, fixed draw order
(limbs, joints, left hand, right hand, face). Visibility comes from the z-buffer (:func:`keypoint_visibility`).
Also the 2D overlay of the scail mode, and :func:`peer_frames`, a consumer's own pipeline around the drawing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from .. import keypoints as kp
from ..body.raster import Fragments


@dataclass(frozen=True)
class PoseStyle:
    """How one consumer expects its pose frames drawn (see pose-drawing.md §7)."""

    name: str
    toes: str | None  # key of ``keypoints.TOE_COLORS`` or None for OpenPose-18 only
    face: str  # "none", "dots" (DWPose 68 white dots), "inner_dots" (SCAIL: brows, eyes, mouth) or "contours"
    fixed_widths: tuple[int, int, int, int] | None  # (stick half-width, joint r, hand line, hand joint r) or auto
    swap_rb: bool = False  # UniAnimate reads its pose PNGs with R and B swapped
    head: bool = True  # OpenPose nose/eye/ear joints and limbs (the hybrid draws face contours instead)
    limbs: bool = True  # trunk, arm and leg sticks and joints (SCAIL renders those as 3D capsules)
    neck_rule: str = "both"  # see ``keypoints.to_openpose``: Wan-Animate draws the neck on the mean shoulder score
    thin: bool = False  # SCAIL: hand lines, hand joints and face dots min(max(short side // 300, 1), 2) px
    hand_joint_color: tuple[int, int, int] = kp.HAND_JOINT_COLOR
    # The consumer's own pipeline around the drawing (``peer_pipeline`` of the renderer): keypoints normalised by
    # the source frame and drawn on this fixed (height, width) canvas, then stored as JPEG of this quality.
    canvas: tuple[int, int] | None = None
    jpeg_quality: int | None = None
    # DWPose's annotator (controlnet_aux, Animate Anyone) draws at this short side, each side rounded to a multiple of
    # 64, and resizes its map to the output with OpenCV's bilinear filter: its fixed widths are in those pixels.
    draw_short_side: int | None = None

    def widths(self, height: int, width: int) -> tuple[int, int, int, int]:
        if self.fixed_widths is not None:
            stick, joint_r, hand, hand_r = self.fixed_widths
        else:
            stick = max(int(min(height, width) / 200) - 1, 1)  # Wan-Animate "v2" widths
            joint_r, hand = stick, max(stick // 2, 1)
            hand_r = hand
        if self.thin:
            hand = hand_r = _thin_width(height, width)
        return stick, joint_r, hand, hand_r

    def face_dot_radius(self, height: int, width: int) -> int:
        return _thin_width(height, width) if self.thin else 3


def _thin_width(height: int, width: int) -> int:
    return min(max(int(min(height, width) / 300), 1), 2)


STYLES: dict[str, PoseStyle] = {
    "wan_animate": PoseStyle("wan_animate", toes="wan", face="none", fixed_widths=None, neck_rule="mean"),
    "dwpose": PoseStyle("dwpose", toes=None, face="dots", fixed_widths=(4, 4, 2, 4), draw_short_side=512),
    "unianimate": PoseStyle("unianimate", toes="unianimate", face="none", fixed_widths=(4, 4, 2, 4), swap_rb=True,
                            canvas=(768, 512), jpeg_quality=95),
    # The EMOSH hybrid signal: thin Wan-style skeleton with white hand joints and face contours, over the mesh.
    "hybrid": PoseStyle("hybrid", toes="wan", face="contours", fixed_widths=None, hand_joint_color=(255, 255, 255),
                        head=False),
    # SCAIL-Preview's 2D overlay on its capsule render: nose-eye-ear sticks, DWPose hands, inner face dots.
    "scail": PoseStyle("scail", toes=None, face="inner_dots", fixed_widths=(4, 4, 1, 1), limbs=False, thin=True),
}
# Styles of the ``keypoints`` render mode (the other two belong to the hybrid and scail modes).
KEYPOINT_STYLES = tuple(name for name in STYLES if name not in ("hybrid", "scail"))
# iBUG-68 points SCAIL draws: eyebrows 17-26, eyes 36-47, mouth 48-67 (no jaw line, no nose).
_INNER_FACE68 = tuple(range(17, 27)) + tuple(range(36, 68))

# Depth slack (metres) within which a keypoint counts as on the visible surface: face points sit on it, finger
# joints lie about a finger radius below it.
_FACE_TOLERANCE = 0.01
_SURFACE_TOLERANCE = 0.03
# Face-plane landmarks (FaceMesh): right/left eye outer corners, forehead, chin; and the body points of the face.
_FACE_FRAME = (33, 263, 10, 152)
_BODY_FACE_POINTS = (0, 1, 2, 3, 4, 5, 6, 9, 10)
_TRUNK_PARTS = ("torso", "neck", "head")


def see_through_table(part_names: list[str], device: torch.device) -> torch.Tensor:
    """[553, P] bool: surfaces of part p that do not hide landmark n even when they are in front of it.

    Body and hand landmarks are hidden only by the trunk (torso, neck, head), never by their own parts: an arm
    behind the back disappears, an arm crossing in front of the chest does not hide the shoulder behind it —
    2D pose detectors still localise such self-occluded joints, and models trained on them expect them drawn.
    Face landmarks are exact surface points: any nearer surface hides them.
    """
    table = torch.zeros(len(kp.landmark_names()), len(part_names), dtype=torch.bool, device=device)
    trunk = [part_names.index(p) for p in _TRUNK_PARTS]
    limbs = [i for i in range(len(part_names)) if i not in trunk]
    table[:kp.FACE, limbs] = True
    for index, parts in kp.BODY_OWN_PARTS.items():
        for part in parts:
            table[index, part_names.index(part)] = True
    return table


def face_toward_camera(camera_points: torch.Tensor) -> torch.Tensor:
    """[B] bool: the face plane (eye corners, forehead, chin) faces the camera (DWPose loses the face otherwise)."""
    right, left, top, chin = (camera_points[:, kp.FACE + i] for i in _FACE_FRAME)
    forward = torch.linalg.cross(left - right, chin - top)  # points into the head for a face seen from the front
    return (forward * (right + left) / 2).sum(-1) > 0


def keypoint_visibility(fragments: Fragments, pixels: torch.Tensor, camera_points: torch.Tensor,
                        part_labels: torch.Tensor, faces: torch.Tensor, see_through: torch.Tensor) -> torch.Tensor:
    """[B, 553] bool: a keypoint is drawn when it lies in the image and is not hidden behind the body.

    Hidden means: the visible surface at its pixel is nearer than the keypoint (by more than a small tolerance)
    and is of a part that hides it (``see_through_table``: an elbow behind the torso is hidden, one behind its own
    forearm is not); face points and the body's face points also need the face to point toward the camera.
    """
    batch, height, width = fragments.size
    depth = camera_points[..., 2]
    col = pixels[..., 0].floor().long()
    row = pixels[..., 1].floor().long()
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height) & (depth > 0)
    flat = torch.arange(batch, device=pixels.device)[:, None] * (height * width)
    flat = (flat + row.clamp(0, height - 1) * width + col.clamp(0, width - 1)).reshape(-1)
    # Look the pixels up in the compact (sorted) covered-pixel list instead of building full-size maps.
    covered = fragments.covered
    if covered.numel() == 0:
        return inside
    pos = torch.searchsorted(covered, flat).clamp(max=covered.numel() - 1)
    on_body = (covered.index_select(0, pos) == flat).view_as(depth)
    surface_depth = torch.where(on_body, fragments.covered_depth.index_select(0, pos).view_as(depth),
                                torch.full_like(depth, float("inf")))
    surface_face = fragments.covered_face.index_select(0, pos).view_as(depth)
    surface_part = part_labels[faces[surface_face, 0]]
    tolerance = torch.full_like(depth[0], _SURFACE_TOLERANCE)
    tolerance[kp.FACE:] = _FACE_TOLERANCE
    in_front = depth <= surface_depth + tolerance
    through = see_through[torch.arange(pixels.shape[1], device=pixels.device)[None, :], surface_part] & on_body
    visible = inside & (in_front | through)
    facing = face_toward_camera(camera_points)[:, None]
    visible[:, kp.FACE:] &= facing
    visible[:, list(_BODY_FACE_POINTS)] &= facing
    return visible


def _color(rgb: tuple[int, int, int], scale: float = 1.0) -> tuple[int, int, int]:
    return tuple(int(c * scale) for c in rgb)


def _limb(canvas: np.ndarray, p: np.ndarray, q: np.ndarray, half_width: int, color: tuple[int, int, int]) -> None:
    """Filled ellipse from p to q, tapering at the joints (the OpenPose limb)."""
    length = math.hypot(p[0] - q[0], p[1] - q[1])
    angle = math.degrees(math.atan2(p[1] - q[1], p[0] - q[0]))
    centre = (int((p[0] + q[0]) / 2), int((p[1] + q[1]) / 2))
    polygon = cv2.ellipse2Poly(centre, (int(length / 2), half_width), int(angle), 0, 360, 1)
    cv2.fillConvexPoly(canvas, polygon, color)


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(p[0]), int(p[1])


def _off_origin(p: np.ndarray) -> bool:
    """The peers' hand and face test (DWPose, UniAnimate, Wan2.2): a point is drawn only when both truncated
    coordinates exceed eps = 0.01, so a point in the first pixel row or column is skipped like a missing (0, 0)
    or (-1, -1) one."""
    return int(p[0]) > 0.01 and int(p[1]) > 0.01


def draw_body(canvas: np.ndarray, points: np.ndarray, visible: np.ndarray, style: PoseStyle) -> None:
    """Body-20 points [20, 2] (OpenPose order + toes) → limbs, then joints."""
    stick, joint_r, _, _ = style.widths(*canvas.shape[:2])
    n_limbs = 19 if style.toes else 17
    toe = kp.TOE_COLORS.get(style.toes or "", ())
    for i, (a, b) in enumerate(kp.OPENPOSE_LIMBS[:n_limbs]):
        if visible[a] and visible[b] and _limb_drawn(style, i):
            color = kp.OPENPOSE_COLORS[i] if i < 17 else toe[i - 17]
            _limb(canvas, points[a], points[b], stick, _color(color, kp.LIMB_DIM))
    n_joints = 20 if style.toes else 18
    for j in range(n_joints):
        if visible[j] and (style.head if j in kp.OPENPOSE_HEAD_JOINTS else style.limbs):
            color = kp.OPENPOSE_COLORS[j] if j < 18 else toe[j - 16]
            cv2.circle(canvas, _pt(points[j]), joint_r, _color(color), thickness=-1)


def _limb_drawn(style: PoseStyle, limb: int) -> bool:
    """Neck-nose belongs to both the head and the trunk: drawn only when both are (not by hybrid nor SCAIL)."""
    if limb == _NECK_NOSE:
        return style.head and style.limbs
    return style.head if limb in kp.OPENPOSE_HEAD_LIMBS else style.limbs


_NECK_NOSE = kp.OPENPOSE_HEAD_LIMBS[0]


def draw_hand(canvas: np.ndarray, points: np.ndarray, visible: np.ndarray, style: PoseStyle) -> None:
    """One 21-point hand: HSV-coloured bones, then joints (points in the first pixel row/column are skipped)."""
    _, _, line, joint_r = style.widths(*canvas.shape[:2])
    shown = [bool(visible[j]) and _off_origin(points[j]) for j in range(len(kp.HAND_NAMES))]
    for e, (a, b) in enumerate(kp.HAND_BONES):
        if shown[a] and shown[b]:
            cv2.line(canvas, _pt(points[a]), _pt(points[b]), kp.HAND_BONE_COLORS[e], thickness=line)
    for j in range(len(kp.HAND_NAMES)):
        if shown[j]:
            cv2.circle(canvas, _pt(points[j]), joint_r, style.hand_joint_color, thickness=-1)


def draw_face_contours(canvas: np.ndarray, face: np.ndarray, visible: np.ndarray) -> None:
    """Hybrid face: eyebrows, eye contours with pupils clipped to the eye opening, outer and inner lips."""
    thickness = max(1, round(min(canvas.shape[:2]) / 512))
    for side in ("right", "left"):
        _draw_pupil(canvas, face, visible, side)
    for name, polylines in kp.FACE_CONTOURS.items():
        for line in polylines:
            for a, b in zip(line[:-1], line[1:]):
                if visible[a] and visible[b]:
                    cv2.line(canvas, _pt(face[a]), _pt(face[b]), kp.FACE_COLORS[name], thickness, cv2.LINE_AA)


def _draw_pupil(canvas: np.ndarray, face: np.ndarray, visible: np.ndarray, side: str) -> None:
    """Iris disc in the eye colour with a dark pupil, drawn only inside the eye opening (so a blink hides it)."""
    contour = kp.FACE_CONTOURS[f"{side}_eye"][0]
    centre, ring = kp.IRIS_CENTRE[side], kp.IRIS_RING[side]
    if not (visible[centre] and all(visible[i] for i in contour)):
        return
    radius = float(np.linalg.norm(face[ring] - face[centre], axis=1).mean())
    eye = np.round(face[contour]).astype(np.int32)
    x0, y0 = np.maximum(eye.min(axis=0) - 1, 0)
    x1, y1 = np.minimum(eye.max(axis=0) + 2, [canvas.shape[1], canvas.shape[0]])
    if x1 <= x0 or y1 <= y0 or radius < 0.5:
        return
    opening = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(opening, [eye - [x0, y0]], 255)
    disc = np.zeros_like(opening)
    c = (int(round(face[centre][0] - x0)), int(round(face[centre][1] - y0)))
    cv2.circle(disc, c, max(1, int(round(radius))), 255, thickness=-1)
    pupil = np.zeros_like(opening)
    cv2.circle(pupil, c, max(1, int(round(radius * 0.45))), 255, thickness=-1)
    roi = canvas[y0:y1, x0:x1]
    roi[(disc > 0) & (opening > 0)] = kp.FACE_COLORS[f"{side}_eye"]
    roi[(pupil > 0) & (opening > 0)] = kp.FACE_COLORS[f"{side}_pupil"]


def draw_frame(canvas: np.ndarray, points: np.ndarray, visible: np.ndarray, style: PoseStyle) -> np.ndarray:
    """Draw one frame's 553-layout keypoints [553, 2] (pixels) with visibility [553] onto an RGB uint8 canvas."""
    body, body_visible = kp.to_openpose(torch.from_numpy(points), torch.from_numpy(visible), style.neck_rule)
    draw_body(canvas, body.numpy(), body_visible.numpy(), style)
    for start in (kp.LEFT_HAND, kp.RIGHT_HAND):
        stop = start + len(kp.HAND_NAMES)
        draw_hand(canvas, points[start:stop], visible[start:stop], style)
    if style.face in ("dots", "inner_dots"):
        face68, face68_visible = (t.numpy() for t in kp.to_face68(torch.from_numpy(points),
                                                                 torch.from_numpy(visible)))
        radius = style.face_dot_radius(*canvas.shape[:2])
        for i in range(68) if style.face == "dots" else _INNER_FACE68:
            if face68_visible[i] and _off_origin(face68[i]):
                cv2.circle(canvas, _pt(face68[i]), radius, (255, 255, 255), thickness=-1)
    elif style.face == "contours":
        draw_face_contours(canvas, points[kp.FACE:], visible[kp.FACE:])
    if style.swap_rb:
        canvas[:] = canvas[..., ::-1]
    return canvas


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """An RGB uint8 frame [H, W, 3] as it reads back from a JPEG written by OpenCV at ``quality`` (UniAnimate
    stores its pose frames with ``cv2.imwrite(.jpg)``, default quality 95, and trains on what it reads back)."""
    ok, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].copy()


def _normalised(points: np.ndarray, frame: tuple[int, int], canvas: tuple[int, int]) -> np.ndarray:
    """Pixels [N, 2] of a ``frame`` (H, W) → pixels of a ``canvas`` (H, W) through normalised coordinates, in double
    precision: a float32 scale factor moves exact midpoints by ~1e-5 px, enough to turn a vertical limb's
    truncated angle from 90 to 89 degrees."""
    return points.astype(np.float64) / np.array([frame[1], frame[0]]) * np.array([canvas[1], canvas[0]])


def peer_frames(points: np.ndarray, visible: np.ndarray, style: PoseStyle, source_size: tuple[int, int],
                size: tuple[int, int]) -> np.ndarray:
    """Pose frames [B, H, W, 3] made the way the consumer makes its own (UniAnimate's pose folder + loader).

    ``points`` [B, 553, 2] are pixels of the track's ``source_size`` (H, W) frame: normalised by it and drawn on
    the style's fixed canvas (an anisotropic stretch when the aspects differ), JPEG round trip at the style's
    quality, then resized to ``size`` (H, W) with PIL's bilinear filter as the consumer's loader does.
    """
    canvas_h, canvas_w = style.canvas
    height, width = size
    frames = np.empty((points.shape[0], height, width, 3), np.uint8)
    for i in range(points.shape[0]):
        canvas = draw_frame(np.zeros((canvas_h, canvas_w, 3), np.uint8),
                            _normalised(points[i], source_size, (canvas_h, canvas_w)), visible[i], style)
        if style.jpeg_quality is not None:
            canvas = jpeg_round_trip(canvas, style.jpeg_quality)
        if (canvas_h, canvas_w) != (height, width):
            canvas = np.asarray(Image.fromarray(canvas).resize((width, height), Image.BILINEAR))
        frames[i] = canvas
    return frames


def short_side_frames(points: np.ndarray, visible: np.ndarray, style: PoseStyle, size: tuple[int, int]) -> np.ndarray:
    """Pose frames [B, H, W, 3] made the way DWPose's annotator makes them: ``points`` [B, 553, 2] (pixels of the
    ``size`` (H, W) output) drawn on a canvas whose short side is ``style.draw_short_side`` (each side rounded to a
    multiple of 64, as its ``resize_image`` does), then resized to ``size`` with ``cv2.INTER_LINEAR``."""
    height, width = size
    k = style.draw_short_side / min(height, width)
    canvas_h, canvas_w = (max(int(np.round(side * k / 64.0)) * 64, 64) for side in (height, width))
    frames = np.empty((points.shape[0], height, width, 3), np.uint8)
    for i in range(points.shape[0]):
        canvas = draw_frame(np.zeros((canvas_h, canvas_w, 3), np.uint8),
                            _normalised(points[i], size, (canvas_h, canvas_w)), visible[i], style)
        frames[i] = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_LINEAR)
    return frames
