"""Shape swap keeps the driver's motion on the reference body; Spatial Align places it where the reference stands."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emosh.align import spatial_align
from emosh.bench.render import SHAPES, dance_track
from emosh.body.camera import project
from emosh.body.camera import CameraKey
from emosh.errors import InputError
from emosh.render.renderer import rasterize_track
from emosh.retarget import leg_length, lowest_foot, retarget


@pytest.fixture(scope="module")
def pair(anny):
    driver = dance_track(anny, torch.tensor(SHAPES["slim_adult"]), 6, height=192, width=128)
    driver = driver.replace(translation=driver.translation + torch.linspace(0, 0.5, 6)[:, None] * torch.tensor(
        [1.0, 0.0, 0.0]))
    reference = dance_track(anny, torch.tensor(SHAPES["child"]), 1, height=160, width=200)
    return driver, reference


def test_retarget_keeps_driver_rotations_with_reference_shape(anny, pair):
    driver, reference = pair
    out = retarget(anny, driver, reference)
    assert torch.equal(out.shape, reference.shape)
    assert torch.equal(out.pose, driver.pose) and torch.equal(out.global_orient, driver.global_orient)
    assert torch.equal(out.expression, driver.expression)
    assert torch.equal(out.cam_R, driver.cam_R) and torch.equal(out.focal, driver.focal)
    # Feet on the driver's ground line, every frame.
    assert torch.allclose(lowest_foot(anny, out), lowest_foot(anny, driver), atol=1e-4)
    # Travel scaled by the leg-length ratio (the child takes shorter steps).
    ratio = float(leg_length(anny, reference.shape) / leg_length(anny, driver.shape))
    assert ratio < 0.8
    travel = out.translation[-1, 0] - out.translation[0, 0]
    assert abs(float(travel) - 0.5 * ratio) < 1e-4
    assert out.landmarks2d is None and "retarget" in out.meta


def test_retarget_options(anny, pair):
    driver, reference = pair
    keep = retarget(anny, driver, reference, shape="driver", keep_ground=False, scale_trajectory=False)
    assert torch.equal(keep.shape, driver.shape) and torch.equal(keep.translation, driver.translation)
    mid = retarget(anny, driver, reference, shape="blend", blend=0.25)
    assert torch.allclose(mid.shape, 0.75 * driver.shape + 0.25 * reference.shape)
    jaw = anny.expression_labels.index("jawOpen")
    half = retarget(anny, driver, reference, expression_strength=0.5, hand_strength=0.0, parts=("body", "face"))
    assert torch.allclose(half.expression[:, jaw], 0.5 * driver.expression[:, jaw])
    finger = anny.pose_labels.index("finger2-1.L")
    assert (half.pose[:, finger] == 0).all()
    zoomed = retarget(anny, driver, reference, camera_keys=(CameraKey(0, 1.0), CameraKey(5, 2.0)))
    assert torch.allclose(zoomed.focal[-1], 2.0 * driver.focal[-1]) and torch.allclose(zoomed.focal[0], driver.focal[0])
    with pytest.raises(InputError):
        retarget(anny, driver, reference, parts=("body", "tail"))


def _box(mask: torch.Tensor) -> np.ndarray:
    rows = mask.any(dim=1).nonzero()[:, 0]
    cols = mask.any(dim=0).nonzero()[:, 0]
    return np.array([int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])])


def test_align_puts_the_person_on_the_reference_within_two_pixels(anny):
    # Reference: a person off-centre in a landscape photo. Retargeted track: the same body and pose at the anchor,
    # filmed by another camera (portrait, other distance, other side).
    shape = torch.tensor(SHAPES["heavy_adult"])
    reference = dance_track(anny, shape, 1, height=300, width=400, distance=3.5)
    reference = reference.replace(cam_t=reference.cam_t + torch.tensor([0.6, -0.1, 0.0]))
    moving = dance_track(anny, shape, 3, height=256, width=192, distance=2.2)
    moving = moving.replace(pose=reference.pose.repeat(3, 1, 1), global_orient=reference.global_orient.repeat(3, 1),
                            cam_t=moving.cam_t + torch.tensor([-0.3, 0.2, 0.0]))
    image = np.zeros((300, 400, 3), np.uint8)
    pelvis = project(reference.translation[:, None], reference.focal, reference.cam_R, reference.cam_t,
                     reference.image_size)[0, 0]
    image[int(pelvis[1]) - 2:int(pelvis[1]) + 3, int(pelvis[0]) - 2:int(pelvis[0]) + 3] = 255
    width, height = 256, 320
    result = spatial_align(anny, image, reference, moving, width=width, height=height)
    assert result.track.image_size == (height, width)
    aligned_mask = rasterize_track(anny, result.track.frames(0, 1), result.track.focal[:1], (height, width))[2].mask[0]
    before = rasterize_track(anny, moving.frames(0, 1), moving.focal[:1] * width / 192, (height, width))[2].mask[0]
    ref_box, aligned_box = _box(result.reference_mask > 0.5), _box(aligned_mask)
    assert np.abs(ref_box - aligned_box).max() <= 2
    assert np.abs(ref_box - _box(before)).max() > 20  # it really moved
    # The reference image went through the same cover + crop: its pelvis marker lands on the aligned pelvis.
    aligned_pelvis = project(result.track.translation[:1, None], result.track.focal[:1], result.track.cam_R[:1],
                             result.track.cam_t[:1], (height, width))[0, 0]
    ys, xs = np.nonzero(result.reference_image[..., 0] > 128)
    assert abs(xs.mean() + 0.5 - float(aligned_pelvis[0])) < 1.5 and abs(ys.mean() + 0.5 - float(aligned_pelvis[1])) < 1.5


def test_cli_retarget_and_render(tmp_path, anny, pair, capsys):
    from emosh.cli import main
    from emosh.video import read_frames, write_image

    driver, reference = pair
    driver.save(tmp_path / "drv.safetensors")
    reference.save(tmp_path / "ref.safetensors")
    write_image(tmp_path / "ref.png", np.full((160, 200, 3), 90, np.uint8))
    assert main(["retarget", "--driving", str(tmp_path / "drv.safetensors"), "--reference",
                 str(tmp_path / "ref.safetensors"), "--out", str(tmp_path / "out.safetensors"),
                 "--align-image", str(tmp_path / "ref.png"), "--width", "128", "--height", "160",
                 "--camera-keys", "0 1; 5 1.2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames"] == 6 and summary["width"] == 128
    assert main(["render", str(tmp_path / "out.safetensors"), "--mode", "hybrid", "--out",
                 str(tmp_path / "hybrid.mp4"), "--batch-size", "4"]) == 0
    frames = read_frames(tmp_path / "hybrid.mp4")
    assert len(frames) == 6 and frames[0].shape == (160, 128, 3)
    assert frames[0].mean() < 250  # a body was drawn on the white background


def test_unseen_limbs_take_the_reference_pose(anny, pair):
    """A driver whose left arm leaves the frame: while unseen that arm takes the reference's pose, fading over
    a few frames; the seen right arm keeps the driver's rotations exactly; the option switches it off."""
    from emosh.body.joints import limb_joints

    driver, reference = pair
    frames = 120
    driver = driver.frames(0, 1).replace(**{k: v.repeat(frames, *([1] * (v.dim() - 1))) for k, v in dict(
        pose=driver.pose[:1], global_orient=driver.global_orient[:1], translation=driver.translation[:1],
        expression=driver.expression[:1], focal=driver.focal[:1], cam_R=driver.cam_R[:1], cam_t=driver.cam_t[:1],
        confidence=driver.confidence[:1], detected=driver.detected[:1]).items()})
    confidence = driver.confidence.clone()
    confidence[:4, [13, 15]] = 0.0  # left elbow + wrist out of frame at the start
    confidence[70:, [13, 15]] = 0.0  # and again from frame 70 on
    driver = driver.replace(confidence=confidence, fps=30.0)  # at 30 fps the smoothed visibility rounds below 1
    left, right = limb_joints(anny, "arm", "l"), limb_joints(anny, "arm", "r")
    reference = reference.replace(pose=reference.pose.clone())
    reference.pose[0, left, 2] += 0.8  # the reference holds its left arm differently
    out = retarget(anny, driver, reference)
    assert torch.equal(out.pose[:, right], driver.pose[:, right])
    assert torch.equal(out.pose[30:45, left], driver.pose[30:45, left])  # seen, beyond both fades: exact
    assert (out.pose[0, left] - driver.pose[0, left]).abs().max() > 0.1, "a short gap moves towards the reference"
    assert torch.allclose(out.pose[100:, left], reference.pose[0, left].expand(20, -1, -1), atol=1e-5)
    step = (out.pose[1:, left] - out.pose[:-1, left]).norm(dim=-1).amax()
    assert step < 0.8 / 3  # faded in over several frames, no pop
    kept = retarget(anny, driver, reference, unseen_limbs_from_reference=False)
    assert torch.equal(kept.pose, driver.pose)


def test_align_turns_the_body_to_face_like_the_reference(anny):
    """At the anchor the aligned body has the reference's orientation in camera space; later frames keep the
    driver's turns relative to it; without matching, the driver's view is kept."""
    import roma

    from emosh.align import camera_orientation

    reference = dance_track(anny, torch.tensor(SHAPES["slim_adult"]), 1, height=160, width=120)
    moving = dance_track(anny, torch.tensor(SHAPES["slim_adult"]), 4, height=160, width=120)
    tilt = torch.tensor([[0.5, 0.0, 0.0], [0.5, 0.2, 0.0], [0.4, 0.1, 0.3], [0.3, 0.0, 0.0]])  # seen from below
    moving = moving.replace(global_orient=roma.rotvec_composition([tilt, moving.global_orient]))
    image = np.zeros((160, 120, 3), np.uint8)
    turned = spatial_align(anny, image, reference, moving, width=120, height=160, anchor=1).track
    ref_view, before, after = camera_orientation(reference)[0], camera_orientation(moving), camera_orientation(turned)
    assert torch.allclose(after[1], ref_view, atol=1e-5)
    assert torch.allclose(after[1].T @ after, before[1].T @ before, atol=1e-5)  # relative turns kept
    assert roma.rotmat_geodesic_distance(before[1], ref_view) > 0.3
    kept = spatial_align(anny, image, reference, moving, width=120, height=160, anchor=1, match_orientation=False)
    assert torch.allclose(camera_orientation(kept.track), before, atol=1e-6)


def test_retargeted_silhouette_is_the_reference_body_not_the_driver(anny):
    """Synthetic field-swap leakage check (bench render's pairs, small): the retargeted silhouette matches the
    reference body posed in the driver's motion, and the driver's own silhouette clearly does not."""
    from emosh.bench.render import SHAPES, dance_track, ground_truth, mask_iou
    from emosh.retarget import retarget

    for driver_name, reference_name in (("slim_adult", "heavy_adult"), ("adult", "child")):
        driver = dance_track(anny, torch.tensor(SHAPES[driver_name]), 4, height=192, width=128)
        reference = dance_track(anny, torch.tensor(SHAPES[reference_name]), 1, height=192, width=128)
        truth = ground_truth(anny, driver, reference.shape)
        assert mask_iou(anny, retarget(anny, driver, reference), truth) >= 0.97
        assert mask_iou(anny, driver, truth) < 0.9
