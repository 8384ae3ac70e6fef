"""Rasteriser against analytic cases, semantic colours, keypoint visibility/drawing styles, streaming renderer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emosh import keypoints as kp
from emosh.bench.render import SHAPES, dance_track
from emosh.body.camera import project_camera_points
from emosh.render import draw, shading
from emosh.render.raster import Fragments, interpolate, rasterize
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
    from emosh.track.correspondence import mesh_landmarks

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
