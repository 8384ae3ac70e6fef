"""Rasteriser against analytic cases, semantic colours, keypoint visibility/drawing styles, streaming renderer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emosh import keypoints as kp
from emosh.bench.render import SHAPES, dance_track
from emosh.body.camera import project_camera_points
from emosh.body import shading
from emosh.body.raster import Fragments, interpolate, rasterize
from emosh.render import draw
from emosh.render.renderer import render_all, render_track


def _pixel_centres(height: int, width: int) -> np.ndarray:
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return np.stack([jj, ii], -1)


def _inside_convex(poly: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Pixel centres strictly inside a convex polygon (either winding), brute force."""
    signs = []
    for a, b in zip(poly, np.roll(poly, -1, axis=0)):
        signs.append((b[0] - a[0]) * (pts[..., 1] - a[1]) - (b[1] - a[1]) * (pts[..., 0] - a[0]))
    signs = np.stack(signs)
    return (signs > 0).all(0) | (signs < 0).all(0)


def _camera_triangle() -> tuple[torch.Tensor, torch.Tensor, tuple[int, int], torch.Tensor]:
    cam = torch.tensor([[[-0.31, -0.22, 2.0], [0.42, -0.05, 3.1], [-0.07, 0.37, 2.6]]])
    focal = torch.tensor([90.0])
    size = (48, 64)
    pix = project_camera_points(cam, focal, size)
    return cam, torch.cat([pix, cam[..., 2:]], -1), size, focal


def test_triangle_coverage_depth_and_perspective_barycentrics():
    cam, points, size, focal = _camera_triangle()
    frags = rasterize(points, torch.tensor([[0, 1, 2]]), size)
    expected = _inside_convex(points[0, :, :2].numpy(), _pixel_centres(*size))
    mask = frags.mask[0].numpy()
    assert expected.sum() > 200
    assert (mask != expected).sum() == 0  # pixel-centre rule: covered exactly where the centre is inside
    # Perspective-correct: interpolated camera positions lie on the pixel's viewing ray and on the plane.
    pos = interpolate(frags, torch.tensor([[0, 1, 2]]), cam[0])[0][frags.mask[0]]
    rays = torch.from_numpy(_pixel_centres(*size)).float()[frags.mask[0]]
    ray_px = focal * pos[:, :2] / pos[:, 2:] + torch.tensor([size[1] / 2, size[0] / 2])
    assert torch.allclose(ray_px, rays, atol=1e-3)
    normal = torch.linalg.cross(cam[0, 1] - cam[0, 0], cam[0, 2] - cam[0, 0])
    assert ((pos - cam[0, 0]) @ normal).abs().max() < 1e-4
    assert torch.allclose(frags.depth[0][frags.mask[0]], pos[:, 2], atol=1e-4)
    assert torch.isinf(frags.depth[0][~frags.mask[0]]).all()
    assert (frags.face_id[0][~frags.mask[0]] == -1).all()


def _cube(angle: float) -> tuple[torch.Tensor, torch.Tensor]:
    corners = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]  # outward winding
    faces = torch.tensor([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    rot_y = torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
    rot_x = torch.tensor([[1, 0, 0], [0, math.cos(0.5), -math.sin(0.5)], [0, math.sin(0.5), math.cos(0.5)]])
    return corners @ (rot_x @ rot_y).T + torch.tensor([0.1, -0.05, 4.0]), faces


def test_cube_silhouette_matches_projected_hull_and_culling_is_lossless():
    from scipy.spatial import ConvexHull

    cam, faces = _cube(0.6)
    size = (96, 128)
    pix = project_camera_points(cam[None], torch.tensor([150.0]), size)
    points = torch.cat([pix, cam[None, :, 2:]], -1)
    frags = rasterize(points, faces, size)
    hull = pix[0].numpy()[ConvexHull(pix[0].numpy()).vertices]
    expected = _inside_convex(hull, _pixel_centres(*size))
    mask = frags.mask[0].numpy()
    assert expected.sum() > 1000
    assert (mask != expected).sum() <= 2  # at most pixel centres lying exactly on the outline
    culled = rasterize(points, faces, size, cull_backfaces=True)
    assert torch.equal(culled.mask, frags.mask) and torch.equal(culled.face_id, frags.face_id)
    # Nearest surface wins: the far side (back faces only, via reversed winding) lies behind everywhere.
    far = rasterize(points, faces[:, [0, 2, 1]], size, cull_backfaces=True)
    assert torch.equal(far.mask, frags.mask)
    assert (frags.depth[frags.mask] <= far.depth[frags.mask] + 1e-5).all()
    assert (far.depth[frags.mask] - frags.depth[frags.mask]).mean() > 0.3


def test_fragments_from_full_maps_round_trip():
    cam, points, size, _ = _camera_triangle()
    frags = rasterize(points.repeat(2, 1, 1), torch.tensor([[0, 1, 2]]), size)
    copy = Fragments(face_id=frags.face_id, bary=frags.bary, depth=frags.depth)
    assert torch.equal(copy.covered, frags.covered) and torch.equal(copy.mask, frags.mask)
    attrs = torch.rand(3, 4)
    assert torch.allclose(interpolate(copy, torch.tensor([[0, 1, 2]]), attrs),
                          interpolate(frags, torch.tensor([[0, 1, 2]]), attrs))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_rasterize_cuda_matches_cpu():
    cam, faces = _cube(0.3)
    pix = project_camera_points(cam[None], torch.tensor([150.0]), (96, 128))
    points = torch.cat([pix, cam[None, :, 2:]], -1)
    cpu = rasterize(points, faces, (96, 128))
    gpu = rasterize(points.cuda(), faces.cuda(), (96, 128))
    assert gpu.face_id.device.type == "cuda"
    assert torch.equal(cpu.face_id, gpu.face_id.cpu())
    assert torch.allclose(cpu.bary, gpu.bary.cpu(), atol=1e-4)


@pytest.fixture(scope="module")
def motion_track(anny):
    return dance_track(anny, torch.tensor(SHAPES["adult"]), 4, height=192, width=128, distance=2.6)


def test_semantic_colour_is_fixed_per_surface_point(anny, motion_track):
    from emosh.render.renderer import rasterize_track

    colors = shading.semantic_colors(anny)
    rest = anny.rest().vertices[0]
    # Colour varies over the body (head vs feet differ clearly), so the test below could fail.
    top, bottom = rest[:, 2].argmax(), rest[:, 2].argmin()
    assert (colors[top] - colors[bottom]).abs().max() > 0.3
    # A chest vertex seen in several poses shows its own colour wherever it lands in the image.
    out, cam, frags = rasterize_track(anny, motion_track, motion_track.focal, motion_track.image_size)
    color_map = interpolate(frags, anny.faces, colors)
    chest = int(((rest - torch.tensor([0.0, -0.15, 0.35])).norm(dim=1)).argmin())
    pix = project_camera_points(cam[:, chest:chest + 1], motion_track.focal, motion_track.image_size)[:, 0]
    seen = 0
    for b in range(motion_track.num_frames):
        j, i = int(pix[b, 0]), int(pix[b, 1])
        if frags.mask[b, i, j] and abs(frags.depth[b, i, j] - cam[b, chest, 2]) < 0.01:
            assert (color_map[b, i, j] - colors[chest]).abs().max() < 0.03
            seen += 1
    assert seen >= 3


def test_keypoints_behind_the_body_are_not_drawn(anny):
    front = dance_track(anny, torch.tensor(SHAPES["adult"]), 1, height=384, width=256, distance=2.2)
    back = front.replace(global_orient=torch.tensor([[0.0, 0.0, math.pi]]))
    for style in ("dwpose",):
        images = {name: render_all(anny, t, ("keypoints",), keypoint_style=style, as_uint8=True)["keypoints"][0]
                  for name, t in (("front", front), ("back", back))}
        white = {name: int((img == 255).all(-1).sum()) for name, img in images.items()}
        assert white["front"] > 50  # the 68 white face dots
        assert white["back"] == 0  # the face is behind the head
    # The visibility test itself. Forearms bent so both hands rest in front of the belly: seen from the front the
    # whole face and both hands are visible; from behind, the face and the hands (behind the torso) are not, while
    # the shoulders still are (seen through their own torso, as 2D detectors report them).
    from emosh.body.camera import to_camera
    from emosh.render.renderer import rasterize_track
    from emosh.body.landmarks import mesh_landmarks

    pose = torch.zeros(2, *front.pose.shape[1:])
    pose[:, anny.pose_labels.index("lowerarm01.L"), 2] = -1.6
    pose[:, anny.pose_labels.index("lowerarm01.R"), 2] = 1.6
    track = front.replace(pose=pose, global_orient=torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.pi]]),
                          translation=front.translation.repeat(2, 1), expression=front.expression.repeat(2, 1),
                          focal=front.focal.repeat(2), cam_R=front.cam_R.repeat(2, 1, 1),
                          cam_t=front.cam_t.repeat(2, 1), confidence=front.confidence.repeat(2, 1),
                          detected=front.detected.repeat(2))
    output, cam, frags = rasterize_track(anny, track, track.focal, track.image_size)
    points = to_camera(mesh_landmarks(anny, output), track.cam_R, track.cam_t)
    pixels = project_camera_points(points, track.focal, track.image_size)
    visible = draw.keypoint_visibility(frags, pixels, points, anny.part_labels, anny.faces,
                                       draw.see_through_table(anny.part_names, torch.device("cpu")))
    face, hands = slice(kp.FACE, None), slice(kp.LEFT_HAND, kp.FACE)
    assert visible[0, face].float().mean() > 0.9 and not visible[1, face].any()
    assert int(visible[0, hands].sum()) >= 40 and int(visible[1, hands].sum()) <= 4
    assert visible[1, 11] and visible[1, 12] and not visible[1, 0]


def test_keypoint_styles_follow_the_pose_drawing_spec():
    canvas = np.zeros((200, 200, 3), np.uint8)
    points = np.zeros((553, 2), np.float32)
    visible = np.zeros(553, bool)
    points[11], points[12] = (60.0, 100.0), (140.0, 100.0)  # left/right shoulder → neck between them
    visible[[11, 12]] = True
    draw.draw_frame(canvas, points, visible, draw.STYLES["dwpose"])
    # Neck–RShoulder limb: 0.6 × (255, 0, 0); neck joint (255, 85, 0); 9 px wide limbs (half-width 4).
    assert tuple(canvas[100, 120]) == (153, 0, 0)
    assert tuple(canvas[100, 100]) == (255, 85, 0)
    assert tuple(canvas[104, 120]) == (153, 0, 0) and tuple(canvas[106, 120]) == (0, 0, 0)
    swapped = np.zeros_like(canvas)
    draw.draw_frame(swapped, points, visible, draw.STYLES["unianimate"])
    assert tuple(swapped[100, 120]) == (0, 0, 153)  # UniAnimate reads R and B swapped


def test_render_track_streams_batches_and_scales_to_output_size(anny, motion_track):
    batches = list(render_track(anny, motion_track, ("mask", "depth", "normal", "parts", "hybrid", "keypoints"),
                                batch_size=3))
    assert [b.start for b in batches] == [0, 3]
    assert batches[0].frames["mask"].shape == (3, 192, 128)
    assert batches[1].frames["hybrid"].shape == (1, 192, 128, 3)
    for batch in batches:
        for frames in batch.frames.values():
            assert frames.dtype == torch.float32 and 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    hybrid = batches[0].frames["hybrid"]
    mask = batches[0].frames["mask"].bool()
    assert (hybrid[~mask] == 1.0).float().mean() > 0.97  # white background (a few keypoint strokes may overhang)
    assert hybrid[mask].mean() < 0.9
    big = render_all(anny, motion_track.frames(0, 1), ("mask",), width=256, height=384)["mask"]
    small = batches[0].frames["mask"][0]
    assert abs(float(big.sum()) / float(small.sum()) - 4.0) < 0.15  # focal scaled with the output size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_render_track_on_cuda_matches_cpu(motion_track):
    from emosh.body import load_body_model

    gpu_model = load_body_model("anny", "cuda")
    cpu_model = load_body_model("anny", "cpu")
    gpu = render_all(gpu_model, motion_track, ("mask", "hybrid"), device="cuda")
    cpu = render_all(cpu_model, motion_track, ("mask", "hybrid"))
    assert gpu["mask"].device.type == "cuda"
    assert (gpu["mask"].cpu() != cpu["mask"]).float().mean() < 1e-3
    assert (gpu["hybrid"].cpu() - cpu["hybrid"]).abs().mean() < 0.01


# ------------------------------------------------------------------ Wan-Animate conformance: the neck rule
# Wan2.2 Animate's pose drawing (``draw_aapose_by_meta_new``) re-stated as data, independently of emosh.render:
# OpenPose-20 body (nose, neck, R/L arm, R/L leg, eyes, ears, toes); every point carries a score, the neck the
# mean of the two shoulders' positions and scores; a limb or joint is skipped when a score is below 0.5.
_WAN_LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
              (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (13, 18), (10, 19)]
_WAN_COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
               (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
               (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85), (200, 200, 0), (100, 100, 0)]
# OpenPose-20 slot → the named fixture points it averages (MediaPipe names, subject's left/right).
_WAN_SOURCES = [("nose",), ("left_shoulder", "right_shoulder"), ("right_shoulder",), ("right_elbow",),
                ("right_wrist",), ("left_shoulder",), ("left_elbow",), ("left_wrist",), ("right_hip",),
                ("right_knee",), ("right_ankle",), ("left_hip",), ("left_knee",), ("left_ankle",), ("right_eye",),
                ("left_eye",), ("right_ear",), ("left_ear",), ("left_foot_index",), ("right_foot_index",)]
_BODY_FIXTURE = {  # pixels on a 480×832 frame: a person facing the camera, arms out and down
    "nose": (240, 150), "left_eye": (252, 138), "right_eye": (228, 138), "left_ear": (266, 146),
    "right_ear": (214, 146), "left_shoulder": (300, 230), "right_shoulder": (180, 232), "left_elbow": (352, 330),
    "right_elbow": (128, 334), "left_wrist": (380, 430), "right_wrist": (96, 428), "left_hip": (276, 460),
    "right_hip": (204, 462), "left_knee": (284, 610), "right_knee": (196, 612), "left_ankle": (290, 760),
    "right_ankle": (190, 758), "left_foot_index": (300, 800), "right_foot_index": (178, 798),
}


def _wan_reference(height: int, width: int, hidden: set[str]) -> np.ndarray:
    """Wan-Animate's drawing of the fixture with the ``hidden`` points at score 0 (all others 1)."""
    import cv2

    slots = []
    for names in _WAN_SOURCES:
        xy = np.mean([_BODY_FIXTURE[n] for n in names], axis=0)
        score = np.mean([0.0 if n in hidden else 1.0 for n in names])
        slots.append((xy, score))
    stick = max(int(min(height, width) / 200) - 1, 1)
    canvas = np.zeros((height, width, 3), np.uint8)
    for (a, b), color in zip(_WAN_LIMBS, _WAN_COLORS):
        (pa, sa), (pb, sb) = slots[a], slots[b]
        if sa < 0.5 or sb < 0.5:
            continue
        centre = (int((pa[0] + pb[0]) / 2), int((pa[1] + pb[1]) / 2))
        length = float(np.hypot(*(pa - pb)))
        angle = math.degrees(math.atan2(pa[1] - pb[1], pa[0] - pb[0]))
        poly = cv2.ellipse2Poly(centre, (int(length / 2), stick), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, poly, [int(c * 0.6) for c in color])
    for (p, s), color in zip(slots, _WAN_COLORS):
        if s >= 0.5:
            cv2.circle(canvas, (int(p[0]), int(p[1])), stick, color, thickness=-1)
    return canvas


def _pack_drawing(style: draw.PoseStyle, height: int, width: int, hidden: set[str]) -> np.ndarray:
    points = np.zeros((553, 2), np.float32)
    visible = np.zeros(553, bool)
    for name, xy in _BODY_FIXTURE.items():
        points[kp.BODY_NAMES.index(name)] = xy
        visible[kp.BODY_NAMES.index(name)] = name not in hidden
    return draw.draw_frame(np.zeros((height, width, 3), np.uint8), points, visible, style)


@pytest.mark.parametrize("hidden", [set(), {"left_shoulder"}, {"right_shoulder", "left_wrist"},
                                    {"left_shoulder", "right_shoulder"}])
def test_wan_animate_style_draws_exactly_like_wan(hidden):
    expected = _wan_reference(832, 480, hidden)
    drawn = _pack_drawing(draw.STYLES["wan_animate"], 832, 480, hidden)
    assert (expected != drawn).any(-1).sum() == 0
    neck = _BODY_FIXTURE["left_shoulder"][0] / 2 + _BODY_FIXTURE["right_shoulder"][0] / 2
    neck_drawn = tuple(drawn[231, int(neck)]) == (255, 85, 0)
    assert neck_drawn == (len(hidden & {"left_shoulder", "right_shoulder"}) < 2)  # one shoulder is enough


def test_dwpose_neck_needs_both_shoulders():
    drawn = _pack_drawing(draw.STYLES["dwpose"], 832, 480, {"left_shoulder"})
    neck = (_BODY_FIXTURE["left_shoulder"][0] + _BODY_FIXTURE["right_shoulder"][0]) // 2
    assert tuple(drawn[231, neck]) == (0, 0, 0)


# ------------------------------------------------------------------ scail: SCAIL-Preview capsules
_SCAIL_FOCAL, _SCAIL_SIZE, _SCAIL_Z = 300.0, (448, 320), 1500.0
_T_POSE_MM = {  # camera frame (x right, y down, z forward), a T-pose facing the camera: the subject's right is -x
    "neck": (0, -500), "head": (0, -700), "right_shoulder": (-180, -500), "right_elbow": (-400, -500),
    "right_wrist": (-620, -500), "left_shoulder": (180, -500), "left_elbow": (400, -500),
    "left_wrist": (620, -500), "right_hip": (-100, 0), "right_knee": (-100, 450), "right_ankle": (-100, 900),
    "left_hip": (100, 0), "left_knee": (100, 450), "left_ankle": (100, 900),
}


def _slots(overrides: dict[str, tuple[float, float, float]] | None = None) -> torch.Tensor:
    from emosh.render import scail

    points = {name: (x, y, _SCAIL_Z) for name, (x, y) in _T_POSE_MM.items()} | (overrides or {})
    return torch.tensor([[points[name] for name in scail.SLOTS]], dtype=torch.float32)


def _expected_capsule_colour(rgb, pixel, axis_dim: int, line: tuple[float, float], depth) -> np.ndarray:
    """SCAIL's shading of an axis-aligned capsule side (along x when ``axis_dim`` = 0, along y when 1) seen
    through pixel (row, col): headlight diffuse, Blinn specular, depth factor, truncated to 0..255."""
    height, width = _SCAIL_SIZE
    row, col = pixel
    d = np.array([(col + 0.5 - width / 2) / _SCAIL_FOCAL, (row + 0.5 - height / 2) / _SCAIL_FOCAL, 1.0])
    d /= np.linalg.norm(d)
    other = 1 - axis_dim  # the cylinder is (p[other] - line[0])² + (p_z - line[1])² = r²
    a = d[other] ** 2 + d[2] ** 2
    b = -2 * (d[other] * line[0] + d[2] * line[1])
    c = line[0] ** 2 + line[1] ** 2 - 21.5 ** 2
    t = (-b - math.sqrt(b * b - 4 * a * c)) / (2 * a)
    p = t * d
    n = np.zeros(3)
    n[other], n[2] = p[other] - line[0], p[2] - line[1]
    n /= np.linalg.norm(n)
    half = -d + np.array([0.0, 0.0, -1.0])
    half /= np.linalg.norm(half)
    factor = np.clip(1 - (p[2] - depth[0]) / (depth[1] - 0.1), 0, 1)
    colour = (np.array(rgb) / 300 + 0.15) * (0.3 + 0.7 * max(-n[2], 0.0)) * factor
    colour = colour + 0.5 * max(float(n @ half), 0.0) ** 32 * factor
    return np.floor(np.clip(colour, 0, 1) * 255)


def _pixel_of(x_mm: float, y_mm: float) -> tuple[int, int]:
    height, width = _SCAIL_SIZE
    return (int(_SCAIL_FOCAL * y_mm / _SCAIL_Z + height / 2), int(_SCAIL_FOCAL * x_mm / _SCAIL_Z + width / 2))


def test_scail_capsules_have_the_spec_colours_and_shading():
    from emosh.render import scail

    depth = (1000.0, 8000.0)
    image = scail.render_capsules(_slots(), torch.tensor([_SCAIL_FOCAL]), _SCAIL_SIZE, depth)[0].numpy()
    assert image.shape == (448, 320, 3) and image.dtype == np.uint8
    assert not image[:20, :20].any()  # black background
    checked = 0
    for start, end, rgb in scail.CAPSULES:
        (xa, ya), (xb, yb) = _T_POSE_MM[start], _T_POSE_MM[end]
        if xa != xb and ya != yb:
            continue  # the two diagonal neck→hip capsules: no axis-aligned expectation
        axis_dim = 0 if ya == yb else 1
        pixel = _pixel_of((xa + xb) / 2, (ya + yb) / 2)
        line = (ya, _SCAIL_Z) if axis_dim == 0 else (xa, _SCAIL_Z)
        expected = _expected_capsule_colour(rgb, pixel, axis_dim, line, depth)
        assert np.abs(image[pixel].astype(float) - expected).max() <= 1, (start, end, image[pixel], expected)
        checked += 1
    assert checked == 11


def test_scail_nearest_capsule_wins_whatever_the_drawing_order():
    """The right forearm (drawn before neck→left hip in SCAIL's order) crosses the trunk capsule: in front it hides
    it, behind it is hidden — a painter's algorithm in any fixed order gets one of the two wrong."""
    from emosh.render import scail

    crossing = _pixel_of(70.0, -150.0)  # neck (0, -500) → left hip (100, 0) passes x = 70 mm at y = -150 mm
    colours = {}
    for name, z in (("front", _SCAIL_Z - 200.0), ("behind", _SCAIL_Z + 200.0)):
        s = z / _SCAIL_Z  # the forearm y = -150 mm, x = -300..250 mm as seen at the trunk's depth
        slots = _slots({"right_elbow": (-300.0 * s, -150.0 * s, z), "right_wrist": (250.0 * s, -150.0 * s, z)})
        image = scail.render_capsules(slots, torch.tensor([_SCAIL_FOCAL]), _SCAIL_SIZE, (1000.0, 8000.0))
        colours[name] = image[0][crossing].numpy().astype(int)
    forearm = dict((a + b, rgb) for a, b, rgb in scail.CAPSULES)["right_elbowright_wrist"]
    assert forearm == (255, 170, 0)
    front, behind = colours["front"], colours["behind"]
    # (both carry the white specular highlight, so compare red against blue)
    assert front[0] > front[2] + 60  # the orange forearm in front
    assert behind[2] > behind[0] + 60  # the blue neck→left-hip capsule in front of the forearm


def test_scail_mode_output_size_background_and_overlay(anny, motion_track):
    from emosh.render import scail

    assert scail.scail_size((1108, 692)) == (896, 512) and scail.scail_size((480, 640)) == (512, 896)
    frames = render_all(anny, motion_track.frames(0, 2), ("scail",), width=160, height=240, as_uint8=True)["scail"]
    assert frames.shape == (2, 240, 160, 3) and frames.dtype == torch.uint8
    assert not frames[:, :8, :8].any()  # black background
    lit = frames.any(-1)
    assert 0.02 < float(lit.float().mean()) < 0.4  # capsules, not a silhouette
    assert bool(((frames == torch.tensor([0, 0, 255], dtype=torch.uint8)).all(-1)).any())  # blue hand joints


# ------------------------------------------------------------------ UniAnimate: its own pose-frame pipeline
def test_unianimate_peer_pipeline_is_uniAnimates_jpeg_on_a_stretched_canvas(anny, tmp_path):
    """UniAnimate normalises DWPose keypoints by the source frame, draws them on a 512×768 canvas, writes it with
    ``cv2.imwrite(.jpg)`` and its loader reads it back with PIL: the peer pipeline gives exactly those pixels."""
    import cv2
    from PIL import Image

    from emosh.body.camera import to_camera
    from emosh.render.renderer import output_focal, rasterize_track
    from emosh.body.landmarks import mesh_landmarks

    track = dance_track(anny, torch.tensor(SHAPES["adult"]), 1, height=160, width=128, distance=2.6)
    kwargs = dict(keypoint_style="unianimate", width=512, height=768, as_uint8=True)
    peer = render_all(anny, track, ("keypoints",), peer_pipeline=True, **kwargs)["keypoints"][0].numpy()
    lossless = render_all(anny, track, ("keypoints",), **kwargs)["keypoints"][0].numpy()

    focal = output_focal(track, 768, 512)
    output, _, frags = rasterize_track(anny, track, focal, (768, 512))
    points = to_camera(mesh_landmarks(anny, output), track.cam_R, track.cam_t)
    visible = draw.keypoint_visibility(frags, project_camera_points(points, focal, (768, 512)), points,
                                       anny.part_labels, anny.faces,
                                       draw.see_through_table(anny.part_names, torch.device("cpu")))
    source = project_camera_points(points, track.focal, (160, 128))[0].numpy()
    stretched = source / np.array([128, 160], np.float32) * np.array([512, 768], np.float32)
    canvas = np.zeros((768, 512, 3), np.uint8)
    draw.draw_frame(canvas, stretched, visible[0].numpy(), draw.STYLES["unianimate"])  # as UniAnimate reads it
    cv2.imwrite(str(tmp_path / "0000.jpg"), canvas[..., ::-1])  # the array UniAnimate's cv2.imwrite receives
    expected = np.asarray(Image.open(tmp_path / "0000.jpg").convert("RGB"))
    assert np.array_equal(peer, expected)
    drawn, drawn_lossless = peer.max(-1) > 40, lossless.max(-1) > 40
    iou = (drawn & drawn_lossless).sum() / (drawn | drawn_lossless).sum()
    assert iou < 0.9  # the stretch moves the figure: the lossless cover-cropped frame is not what UniAnimate saw
    assert len(np.unique(peer.reshape(-1, 3), axis=0)) > 3 * len(np.unique(lossless.reshape(-1, 3), axis=0))


def test_dwpose_peer_pipeline_draws_at_512_short_side_and_resizes(anny):
    """DWPose's annotator (controlnet_aux's DWposeDetector, Animate Anyone) draws its fixed widths at 512 px short
    side (sides rounded to multiples of 64) and resizes the map bilinearly: at 720×1280 that is a 512×896 drawing
    scaled by 1.4, so its sticks come out wider than the lossless frame's 9 px."""
    import cv2

    from emosh.body.camera import to_camera
    from emosh.render.renderer import output_focal, rasterize_track
    from emosh.body.landmarks import mesh_landmarks

    track = dance_track(anny, torch.tensor(SHAPES["adult"]), 1, height=1280, width=720, distance=2.6)
    kwargs = dict(keypoint_style="dwpose", as_uint8=True)
    peer = render_all(anny, track, ("keypoints",), peer_pipeline=True, **kwargs)["keypoints"][0].numpy()
    lossless = render_all(anny, track, ("keypoints",), **kwargs)["keypoints"][0].numpy()
    focal = output_focal(track, 1280, 720)
    output, _, frags = rasterize_track(anny, track, focal, (1280, 720))
    points = to_camera(mesh_landmarks(anny, output), track.cam_R, track.cam_t)
    pixels = project_camera_points(points, focal, (1280, 720))
    visible = draw.keypoint_visibility(frags, pixels, points, anny.part_labels, anny.faces,
                                       draw.see_through_table(anny.part_names, torch.device("cpu")))
    canvas = np.zeros((896, 512, 3), np.uint8)  # 512 / 720 × (720, 1280) = (512, 910) → multiples of 64
    draw.draw_frame(canvas, pixels[0].numpy() * np.array([512 / 720, 896 / 1280], np.float32), visible[0].numpy(),
                    draw.STYLES["dwpose"])
    assert np.array_equal(peer, cv2.resize(canvas, (720, 1280), interpolation=cv2.INTER_LINEAR))
    assert (peer.max(-1) > 40).sum() > 1.3 * (lossless.max(-1) > 40).sum(), "strokes scale with the resize"


def test_renderer_cli_and_node_offer_the_same_modes_and_styles():
    import argparse

    from emosh.render import cli, renderer
    from helpers import pack_nodes

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    render_parser = parser._subparsers._group_actions[0].choices["render"]
    choices = {action.dest: tuple(action.choices) for action in render_parser._actions if action.choices}
    assert choices["mode"] == renderer.MODES and "scail" in renderer.MODES
    assert choices["keypoint_style"] == draw.KEYPOINT_STYLES == ("wan_animate", "dwpose", "unianimate")
    node = pack_nodes("render").MeshConditionRenderer
    styles = next(item.options for item in node.define_schema().inputs if item.id == "keypoint_style")
    assert tuple(styles) == draw.KEYPOINT_STYLES
    with pytest.raises(ValueError, match="unknown keypoint style"):
        next(render_track(None, None, ("keypoints",), keypoint_style="scail"))  # the overlay is not a style


def test_cli_scail_mode_defaults_to_scails_size(anny, tmp_path):
    from emosh.cli import main
    from emosh.video import read_image

    track = dance_track(anny, torch.tensor(SHAPES["adult"]), 1, height=240, width=160, distance=2.6)
    track.save(tmp_path / "t.safetensors")
    assert main(["render", str(tmp_path / "t.safetensors"), "--mode", "scail", "--out", str(tmp_path / "f")]) == 0
    frame = read_image(tmp_path / "f" / "000000.png")
    assert frame.shape == (896, 512, 3) and frame.any() and not frame[:16, :16].any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_scail_capsules_on_cuda_match_cpu():
    from emosh.render import scail

    slots, focal = _slots(), torch.tensor([_SCAIL_FOCAL])
    cpu = scail.render_capsules(slots, focal, _SCAIL_SIZE, (1000.0, 8000.0))
    gpu = scail.render_capsules(slots.cuda(), focal.cuda(), _SCAIL_SIZE, (1000.0, 8000.0))
    assert gpu.device.type == "cuda"
    assert ((gpu.cpu().int() - cpu.int()).abs() > 1).any(-1).float().mean() < 1e-3


def test_scail_depth_factor_spans_the_whole_clip(anny, motion_track):
    """SCAIL normalises depth over the clip: a later frame farther away widens the range, so the first frame's
    capsules come out brighter than when that frame is rendered alone."""
    clip = motion_track.frames(0, 2)
    translation = clip.translation.clone()
    translation[1, 1] += 8.0  # world +y is away from this camera
    clip = clip.replace(translation=translation)
    alone = render_all(anny, clip.frames(0, 1), ("scail",), width=96, height=144, as_uint8=True)["scail"][0]
    within = render_all(anny, clip, ("scail",), width=96, height=144, as_uint8=True, batch_size=1)["scail"][0]
    gain = (within.int() - alone.int())[alone.bool().any(-1)]
    assert int(gain.min()) >= -1 and int(gain.max()) >= 3


def test_scail2_masks_are_the_silhouette_in_scail2s_first_identity_colour(anny, motion_track):
    """SCAIL-2's pose_video_mask / reference_image_mask: pure blue (0, 0, 1) exactly on the body's silhouette, black
    or white everywhere else; SCAIL-2's own 7-colour extraction (threshold 225/255) reads only 'blue' on the body."""
    frames = render_all(anny, motion_track, ("mask", "scail2_mask", "scail2_mask_white"))
    body = frames["mask"].bool()
    assert body.any() and not body.all()
    for mode, background in (("scail2_mask", 0.0), ("scail2_mask_white", 1.0)):
        image = frames[mode]
        assert image.shape == (*body.shape, 3)
        assert torch.equal(image[body], torch.tensor([0.0, 0.0, 1.0]).expand(int(body.sum()), 3))
        assert (image[~body] == background).all()
        on = image > 225.0 / 255.0
        blue = ~on[..., 0] & ~on[..., 1] & on[..., 2]
        assert torch.equal(blue, body)


# ------------------------------------------------------------------ conformance: every consumer style, as data
# Each consumer's drawing rules re-stated as data (from shared/docs/pose-drawing.md §1-§5 and the peers' drawing
# functions: DWPose / controlnet_aux ``draw_bodypose`` + ``draw_handpose`` + ``draw_facepose``, UniAnimate
# ``draw_body_and_foot``, Wan2.2 ``draw_aapose_new`` + ``draw_handpose_new``), drawn by a small OpenCV reference
# below that knows nothing of emosh.render, and compared pixel for pixel with the pack's drawing of the same
# fixture (body, both hands, 68 face points) at several sizes. Nothing here is copied from those projects.
_PALETTE20 = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
              (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
              (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]  # + two toe entries per consumer
# OpenPose limbs as the upstream lists write them: 1-based, limb i coloured palette[i]; 18/19 are the toe limbs.
_LIMB_SEQ_1BASED = [(2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13),
                    (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (14, 19), (11, 20)]
# Hand edges: wrist to each finger's first joint, then along the finger; bone e coloured HSV(e / 20, 1, 1) → uint8.
_HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
               (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]
_HAND_EDGE_RGB = [(255, 0, 0), (255, 77, 0), (255, 153, 0), (255, 229, 0), (204, 255, 0), (128, 255, 0),
                  (51, 255, 0), (0, 255, 25), (0, 255, 102), (0, 255, 179), (0, 255, 255), (0, 178, 255),
                  (0, 102, 255), (0, 25, 255), (51, 0, 255), (128, 0, 255), (204, 0, 255), (255, 0, 230),
                  (255, 0, 153), (255, 0, 77)]


def _wan_widths(height: int, width: int) -> tuple[int, int, int, int]:
    stick = max(int(min(height, width) / 200) - 1, 1)  # "v2": stick half-width = body joint radius
    hand = max(stick // 2, 1)  # hand line thickness = hand joint radius
    return stick, stick, hand, hand


_PEERS = {
    # DWPose's annotator (controlnet_aux, Moore-AnimateAnyone): OpenPose-18, 17 limbs, fixed widths, 68 white dots.
    "dwpose": dict(limbs=17, joints=18, toe_rgb=(), widths=lambda h, w: (4, 4, 2, 4), face_radius=3,
                   neck="both", shown=lambda score: score > 0.3, swap_rb=False),
    # UniAnimate: Body-20 (toes), fixed widths, no face; the model reads its frames R and B swapped.
    "unianimate": dict(limbs=19, joints=20, toe_rgb=((170, 255, 255), (255, 255, 0)), widths=lambda h, w: (4, 4, 2, 4),
                       face_radius=None, neck="both", shown=lambda score: score > 0.3, swap_rb=True),
    # Wan2.2-Animate: Body-20 with its own toe colours, widths from the canvas, no face, neck on the mean score.
    "wan_animate": dict(limbs=19, joints=20, toe_rgb=((200, 200, 0), (100, 100, 0)), widths=_wan_widths,
                        face_radius=None, neck="mean", shown=lambda score: score >= 0.5, swap_rb=False),
}
# pose-drawing.md §6.4: iBUG-68 point i ← FaceMesh vertex (a "+" pair is averaged).
_FACE68_DOC = ("0:127 1:234 2:93 3:132+58 4:58+172 5:136 6:150 7:176 8:152 9:400 10:379 11:365 12:397+288 13:361 "
               "14:323 15:454 16:356 17:70 18:63 19:105 20:66 21:107 22:336 23:296 24:334 25:293 26:300 27:168+6 "
               "28:197+195 29:5 30:4 31:75 32:97 33:2 34:326 35:305 36:33 37:160 38:158 39:133 40:153 41:144 "
               "42:362 43:385 44:387 45:263 46:373 47:380 48:61 49:39 50:37 51:0 52:267 53:269 54:291 55:321 "
               "56:314 57:17 58:84 59:91 60:78 61:82 62:13 63:312 64:308 65:317 66:14 67:87")
_FACE68_SOURCES = [tuple(int(v) for v in item.split(":")[1].split("+")) for item in _FACE68_DOC.split()]


def _hand_fixture(wrist: tuple[float, float], direction: float, size: float) -> np.ndarray:
    """21 hand points [21, 2]: wrist, then four joints along each of five fanned-out fingers (thumb first)."""
    points = [wrist]
    for finger in range(5):
        angle = math.radians(direction + (finger - 2) * 19.0 + (8.0 if finger == 0 else 0.0))
        reach = (0.33, 0.55, 0.74, 0.9) if finger == 0 else (0.47, 0.7, 0.86, 1.0 - 0.04 * abs(finger - 2))
        for r in reach:
            points.append((wrist[0] + math.cos(angle) * r * size, wrist[1] + math.sin(angle) * r * size))
    return np.array(points, np.float64)


def _face_fixture(centre: tuple[float, float], radius: float) -> np.ndarray:
    """68 iBUG-ordered face points [68, 2]: jaw, brows, nose, eyes, outer and inner lips."""
    cx, cy = centre
    pts = [(cx - radius * math.cos(math.pi * k / 16), cy - 0.1 * radius + 0.95 * radius * math.sin(math.pi * k / 16))
           for k in range(17)]
    pts += [(cx + radius * (-0.8 + 0.16 * k + (0.08 if k >= 5 else 0.0)), cy - 0.55 * radius - 0.07 * radius *
             math.sin(math.pi * (k % 5) / 4)) for k in range(10)]
    pts += [(cx + 0.013 * radius, cy - (0.4 - 0.13 * k) * radius) for k in range(4)]
    pts += [(cx + (k - 2) * 0.13 * radius, cy + 0.16 * radius + 0.03 * abs(k - 2) * radius) for k in range(5)]
    for side in (-1, 1):
        ex = cx + side * 0.37 * radius
        pts += [(ex + 0.17 * radius * math.cos(math.pi * k / 3) * -side, cy - 0.3 * radius - 0.07 * radius *
                 math.sin(math.pi * k / 3)) for k in range(6)]
    pts += [(cx + 0.37 * radius * math.cos(math.pi * k / 6), cy + 0.45 * radius + 0.15 * radius *
             math.sin(math.pi * k / 6 + math.pi)) for k in range(12)]
    pts += [(cx + 0.24 * radius * math.cos(math.pi * k / 4), cy + 0.45 * radius + 0.05 * radius *
             math.sin(math.pi * k / 4 + math.pi)) for k in range(8)]
    return np.array(pts, np.float64)


_HANDS_FIXTURE = (_hand_fixture(_BODY_FIXTURE["left_wrist"], 68.0, 46.0),  # subject's left: image right
                  _hand_fixture(_BODY_FIXTURE["right_wrist"], 112.0, 46.0))
_FACE_FIXTURE = _face_fixture((240.3, 151.7), 27.0)


def _conformance_fixture(height: int, width: int, hidden: dict[str, set[int]], edge: bool):
    """The fixture at ``height × width`` (scaled from its 480×832 frame) in the pack's 553 layout, float32 pixels
    and visibility, plus what the peers receive: named body points, two hands and 68 face points, each (x, y,
    shown). ``hidden`` hides body names / hand points ("left_hand", "right_hand") / face points; ``edge`` puts a
    right-hand fingertip and a brow point inside the first pixel column / row (peers skip hand and face points whose
    truncated coordinate is 0)."""
    scale = np.array([width / 480.0, height / 832.0])
    points = np.zeros((553, 2), np.float32)
    visible = np.zeros(553, bool)
    for name, xy in _BODY_FIXTURE.items():
        i = kp.BODY_NAMES.index(name)
        points[i], visible[i] = np.asarray(xy) * scale, name not in hidden.get("body", set())
    hands = []
    for start, fixture, key in ((kp.LEFT_HAND, _HANDS_FIXTURE[0], "left_hand"),
                                (kp.RIGHT_HAND, _HANDS_FIXTURE[1], "right_hand")):
        pts = fixture * scale
        if edge and key == "right_hand":
            pts[20] = (0.4, pts[20][1])
        points[start:start + 21] = pts
        visible[start:start + 21] = [j not in hidden.get(key, set()) for j in range(21)]
    face = _FACE_FIXTURE * scale
    if edge:
        face[19] = (face[19][0], 0.6)
    assigned: set[int] = set()
    for i, sources in enumerate(_FACE68_SOURCES):  # FaceMesh vertices whose (pair) mean is the wanted point
        fresh = [s for s in sources if s not in assigned]
        for s in fresh:
            points[kp.FACE + s] = face[i] if len(fresh) == len(sources) else 2 * face[i] - points[kp.FACE + sources[0]]
            assigned.add(s)
        if i not in hidden.get("face", set()):
            visible[[kp.FACE + s for s in sources]] = True
    named = {name: (*points[kp.BODY_NAMES.index(name)].astype(np.float64), visible[kp.BODY_NAMES.index(name)])
             for name in _BODY_FIXTURE}
    peer_hands = [[(*points[s + j].astype(np.float64), visible[s + j]) for j in range(21)]
                  for s in (kp.LEFT_HAND, kp.RIGHT_HAND)]
    peer_face = []
    for sources in _FACE68_SOURCES:  # the 68 points the peer's detector would report: the mean of the sources
        xy = np.mean([points[kp.FACE + s].astype(np.float64) for s in sources], axis=0)
        peer_face.append((*xy, all(visible[kp.FACE + s] for s in sources)))
    return points, visible, (named, peer_hands, peer_face)


def _peer_draw(peer: str, height: int, width: int, named, hands, face, as_coded: bool = False) -> np.ndarray:
    """The consumer's drawing of one person on a black ``height × width`` canvas, from its rules above, as the
    model reads it (``as_coded``: the canvas as its code draws it, before any channel swap)."""
    import cv2

    rules = _PEERS[peer]
    palette = _PALETTE20 + list(rules["toe_rgb"])
    stick, joint_r, hand_line, hand_r = rules["widths"](height, width)
    slots = []  # Body-20: every slot is the mean of its sources; its score the min (both) or mean of theirs
    for sources in _WAN_SOURCES[:rules["joints"]]:
        xy = np.mean([named[n][:2] for n in sources], axis=0)
        scores = [1.0 if named[n][2] else 0.0 for n in sources]
        slots.append((xy, min(scores) if rules["neck"] == "both" else float(np.mean(scores))))
    canvas = np.zeros((height, width, 3), np.uint8)
    for limb, (a, b) in enumerate(_LIMB_SEQ_1BASED[:rules["limbs"]]):
        (pa, sa), (pb, sb) = slots[a - 1], slots[b - 1]
        if not (rules["shown"](sa) and rules["shown"](sb)):
            continue
        mid = ((pa[0] + pb[0]) / 2, (pa[1] + pb[1]) / 2)
        length = math.sqrt((pa[0] - pb[0]) ** 2 + (pa[1] - pb[1]) ** 2)
        angle = math.degrees(math.atan2(pa[1] - pb[1], pa[0] - pb[0]))
        polygon = cv2.ellipse2Poly((int(mid[0]), int(mid[1])), (int(length / 2), stick), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, palette[limb])
    canvas = (canvas * 0.6).astype(np.uint8)  # limbs at 60 %, then the joints at full colour on top
    for j, (p, s) in enumerate(slots):
        if rules["shown"](s):
            cv2.circle(canvas, (int(p[0]), int(p[1])), joint_r, palette[j], thickness=-1)
    for hand in hands:  # left hand, then right; a hidden point is (-1, -1), any coordinate <= 0.01 is skipped
        pixel = [(int(x), int(y)) if shown else (-1, -1) for x, y, shown in hand]
        for e, (a, b) in enumerate(_HAND_EDGES):
            if min(pixel[a] + pixel[b]) > 0.01:
                cv2.line(canvas, pixel[a], pixel[b], _HAND_EDGE_RGB[e], thickness=hand_line)
        for p in pixel:
            if min(p) > 0.01:
                cv2.circle(canvas, p, hand_r, (0, 0, 255), thickness=-1)
    if rules["face_radius"]:
        for x, y, shown in face:
            p = (int(x), int(y)) if shown else (-1, -1)
            if min(p) > 0.01:
                cv2.circle(canvas, p, rules["face_radius"], (255, 255, 255), thickness=-1)
    return np.ascontiguousarray(canvas[..., ::-1]) if rules["swap_rb"] and not as_coded else canvas


_CONFORMANCE_CASES = {
    "all": ({}, False),
    "hidden": ({"body": {"left_shoulder", "right_wrist", "left_foot_index"}, "left_hand": {0, 7, 8},
                "right_hand": {12}, "face": {30, 40, 60}}, False),
    "edge": ({"body": {"right_shoulder"}}, True),
}
_CONFORMANCE_SIZES = {"dwpose": [(768, 512), (832, 480), (1280, 720)],
                      "unianimate": [(768, 512), (832, 480), (1280, 720)],
                      "wan_animate": [(832, 480), (1280, 720), (1920, 1080)]}


@pytest.mark.parametrize("case", list(_CONFORMANCE_CASES))
@pytest.mark.parametrize("style", list(_PEERS))
def test_keypoint_style_conforms_to_its_consumer(style, case):
    """Zero differing pixels against the consumer's rules, body + hands + face, at three sizes each."""
    assert set(_PEERS) == set(draw.KEYPOINT_STYLES)  # every consumer style has its rules here
    hidden, edge = _CONFORMANCE_CASES[case]
    for height, width in _CONFORMANCE_SIZES[style]:
        points, visible, peer_input = _conformance_fixture(height, width, hidden, edge)
        expected = _peer_draw(style, height, width, *peer_input)
        drawn = draw.draw_frame(np.zeros((height, width, 3), np.uint8), points, visible, draw.STYLES[style])
        differing = int((expected != drawn).any(-1).sum())
        assert differing == 0, (style, case, (height, width), differing)
        assert (drawn.max(-1) > 0).mean() > 0.004  # something was drawn


def test_dwpose_peer_pipeline_conforms_to_dwposes_annotator():
    """DWPose's annotator: detect at 512 px short side (each side rounded to a multiple of 64), draw there with its
    fixed widths, resize the map bilinearly (OpenCV) to the output."""
    import cv2

    for height, width in ((1280, 720), (1920, 1080), (832, 480)):
        points, visible, (named, hands, face) = _conformance_fixture(height, width, {}, False)
        k = 512 / min(height, width)
        canvas_h, canvas_w = (int(np.round(side * k / 64.0)) * 64 for side in (height, width))

        def on_canvas(x, y, shown):  # keypoints normalised by the frame, drawn at the annotator's size
            return x / width * canvas_w, y / height * canvas_h, shown

        small = _peer_draw("dwpose", canvas_h, canvas_w, {n: on_canvas(*p) for n, p in named.items()},
                           [[on_canvas(*p) for p in hand] for hand in hands], [on_canvas(*p) for p in face])
        expected = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
        pack = draw.short_side_frames(points[None], visible[None], draw.STYLES["dwpose"], (height, width))[0]
        assert int((expected != pack).any(-1).sum()) == 0, (height, width)


def test_unianimate_peer_pipeline_conforms_to_uniAnimates_pose_folder(tmp_path):
    """UniAnimate: keypoints normalised by the source frame, drawn on its fixed 512×768 canvas (a stretch when the
    aspect differs), written with ``cv2.imwrite`` as JPEG (default quality 95), read back with PIL (so R and B are
    swapped) and resized by PIL's bilinear filter to the model's size."""
    import cv2
    from PIL import Image

    source = (1108, 692)  # (H, W) of the track's frame: a 0.62 aspect onto the 0.67 canvas
    points, visible, (named, hands, face) = _conformance_fixture(*source, {"right_hand": {3}}, False)

    def on_canvas(x, y, shown):
        return x / source[1] * 512, y / source[0] * 768, shown

    # The canvas as UniAnimate's code draws it; its R/B swap comes from the file round trip below.
    canvas = _peer_draw("unianimate", 768, 512, {n: on_canvas(*p) for n, p in named.items()},
                        [[on_canvas(*p) for p in hand] for hand in hands], [on_canvas(*p) for p in face],
                        as_coded=True)
    cv2.imwrite(str(tmp_path / "0000.jpg"), canvas)
    seen = Image.open(tmp_path / "0000.jpg").convert("RGB")
    for height, width in ((768, 512), (832, 480), (1216, 768)):
        expected = np.asarray(seen if seen.size == (width, height) else seen.resize((width, height), Image.BILINEAR))
        pack = draw.peer_frames(points[None], visible[None], draw.STYLES["unianimate"], source, (height, width))[0]
        assert int((expected != pack).any(-1).sum()) == 0, (height, width)
