"""SMPL-X + FLAME end to end on a stand-in of the licensed files: same formats (an .npz, two latin-1 pickles with a
chumpy array and a sparse regressor, an .npy), humanlike made-up content built from Anny here (no licensed data;
see ``helpers.write_smplx_flame_standin``). Body model, landmark table, tracker, retarget, renders and export."""
from __future__ import annotations

import pickle

import pytest
import torch

from emosh.bench.tracker import synthetic_metrics, synthetic_sequence
from emosh.body import LANDMARK_GROUPS, load_body_model
from emosh.body.landmarks import landmark_table, mesh_landmarks
from emosh.errors import InputError
from emosh.track.fit import FACE_DETAIL, LandmarkBody
from emosh.track.tracker import WindowedTracker, fitted_landmarks2d
from helpers import ANNY_TO_SMPLX_AXES, tpose_anny, write_smplx_flame_standin


@pytest.fixture(scope="module")
def standin_dir(anny, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_smplx_flame_standin(anny, root / "body")
    return root


@pytest.fixture(scope="module")
def smplx(standin_dir):
    return load_body_model("smplx_flame", model_dirs=[str(standin_dir)])


def _motion(model, frames: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(pose=0.3 * torch.randn(frames, len(model.pose_labels), 3, generator=g),
                global_orient=0.3 * torch.randn(frames, 3, generator=g),
                translation=torch.randn(frames, 3, generator=g),
                expression=torch.randn(frames, len(model.expression_labels), generator=g))


def test_rest_body_is_the_template_with_the_flame_head_aligned_at_the_eyes(anny, smplx):
    _, tpose, _ = tpose_anny(anny)
    rest = smplx.rest()
    # the stand-in's FLAME head is stored 2.7 cm away from the body's head: the eye alignment must undo it
    assert (rest.vertices[0] - tpose @ ANNY_TO_SMPLX_AXES.T).abs().max() < 1e-5
    shape = smplx.default_shape()
    shape[10] = 2.0  # a face beta moves the head only, a body beta moves the body
    face_moved = (smplx.rest(shape).vertices[0] - rest.vertices[0]).norm(dim=1) > 1e-6
    head = torch.isin(smplx.part_labels, torch.tensor([smplx.part_index("head")]))
    assert face_moved.any() and not (face_moved & ~head).any()
    shape = smplx.default_shape()
    shape[0] = 2.0
    assert (smplx.rest(shape).joints[0] - rest.joints[0]).norm(dim=1).max() > 0.03  # beta 0 is height here


def test_posed_body_has_bone_tree_joints_expressions_and_pose_correctives(smplx):
    motion = _motion(smplx, 2)
    out = smplx(smplx.default_shape(), **motion)
    rest = smplx.rest_skeleton(smplx.default_shape())
    bones = smplx.pose_bones(rest, motion["pose"], motion["global_orient"], motion["translation"])
    assert torch.allclose(out.joints, bones.joints) and torch.allclose(out.joints[:, 0], motion["translation"])
    no_face = smplx(smplx.default_shape(), **{**motion, "expression": torch.zeros_like(motion["expression"])})
    moved = (out.vertices - no_face.vertices).norm(dim=-1) > 1e-6
    assert moved.any() and not moved[:, smplx.part_labels != smplx.part_index("head")].any()
    bent = smplx.zero_motion(1)
    bent["pose"][0, smplx.pose_labels.index("left_elbow"), 1] = 1.2
    skinned_only = smplx.skinning_weights(torch.arange(smplx.num_vertices))  # LBS without the correctives
    flat = smplx.pose_bones(rest, bent["pose"], bent["global_orient"], bent["translation"])
    transforms = skinned_only @ torch.cat([flat.skin_rotations.flatten(2), flat.skin_translations], 2)
    plain = (transforms[..., :9].reshape(1, -1, 3, 3) @ rest.vertices[..., None])[..., 0] + transforms[..., 9:]
    corrected = (smplx(smplx.default_shape(), **bent).vertices - plain).norm(dim=-1)[0]
    assert 1e-4 < corrected.max() < 0.05  # the elbow's correctives act, a few millimetres


def test_landmark_table_is_transferred_from_annys_onto_the_users_mesh(anny, smplx):
    table = landmark_table(smplx)
    table.validate(smplx)
    pose, _, _ = tpose_anny(anny)
    zero = anny.zero_motion(1)
    anny_tpose = anny(anny.default_shape(), pose, zero["global_orient"], zero["translation"], zero["expression"])
    expected = mesh_landmarks(anny, anny_tpose)[0] @ ANNY_TO_SMPLX_AXES.T
    error_mm = (mesh_landmarks(smplx, smplx.rest())[0] - expected).norm(dim=1) * 1000
    # the stand-in is Anny's mesh in another pose and frame, so a correct transfer finds the same surface points;
    # the ten fingertips, carried by a two-joint neighbourhood whose twist comes from the "front" point, land within
    # a few millimetres (the T-pose turned the arms about an axis a little off the body's forward axis)
    assert error_mm.median() < 0.1 and (error_mm > 1.0).sum() <= 10 and error_mm.max() < 10.0


def test_landmark_skinning_matches_the_full_model(smplx):
    motion = _motion(smplx, 3, seed=1)
    shape = 0.5 * torch.randn(len(smplx.shape_labels), generator=torch.Generator().manual_seed(2))
    body = LandmarkBody(smplx)
    fast = body.landmarks(body.rest(shape), **motion)
    full = mesh_landmarks(smplx, smplx(shape, **motion))
    assert (fast - full).norm(dim=-1).max() < 2e-3  # landmark skinning leaves out the pose correctives only


@pytest.mark.slow
def test_tracker_fits_smplx_video_and_reference_photo(smplx):
    dets, truth = synthetic_sequence(smplx, 24, seed=0)
    tracker = WindowedTracker(smplx, truth["image_size"], fps=25.0, focal=truth["focal"])
    for d in dets:
        tracker.push(d)
    track = tracker.finish()
    assert track.backend == "smplx_flame" and track.num_frames == 24
    fitted = synthetic_metrics(smplx, track, truth)
    rest = synthetic_metrics(smplx, track.replace(pose=torch.zeros_like(track.pose)), truth)
    assert fitted["kp2d_err_pct"] < 0.3 * rest["kp2d_err_pct"]
    assert fitted["pampjpe_body_mm"] < 0.7 * rest["pampjpe_body_mm"]
    # FLAME's coefficients are not individually observable like ARKit actions: the face landmarks must follow
    # (lips, eyelids and irises in the face's own frame, as the fit's face-detail term sees them)
    detail = [LANDMARK_GROUPS["face"][0] + i for i in FACE_DETAIL]

    def centred(points: torch.Tensor) -> torch.Tensor:
        return points[:, detail] - points[:, detail].mean(1, keepdim=True)

    neutral = track.replace(expression=torch.zeros_like(track.expression))
    face_err = [(centred(fitted_landmarks2d(t, smplx)) - centred(truth["landmarks2d"])).norm(dim=-1).mean()
                for t in (track, neutral)]
    assert face_err[0] < 0.7 * face_err[1]
    ref_dets, ref_truth = synthetic_sequence(smplx, 1, seed=6, with_mask=True)
    ref = WindowedTracker(smplx, ref_truth["image_size"], fps=25.0, focal=ref_truth["focal"], reference=True)
    ref.push(ref_dets[0])
    shape = ref.finish().shape
    # the stand-in's body beta 1 is girth (8 % per unit, seen in the silhouette; this body is at -2.1): the photo
    # recovers it, the average body (0) does not
    assert abs(float(shape[1] - ref_truth["shape"][1])) < 0.5 * abs(float(ref_truth["shape"][1]))


def test_retarget_render_and_export_an_smplx_track(smplx, tmp_path):
    from emosh.export import bvh_text
    from emosh.render.renderer import render_all
    from emosh.retarget import retarget

    dets, truth = synthetic_sequence(smplx, 8, seed=5)
    driver = WindowedTracker(smplx, truth["image_size"], fps=25.0, focal=truth["focal"])
    for d in dets:
        driver.push(d)
    driving = driver.finish()
    reference = driving.frames(0, 1).replace(shape=truth["shape"] * 0 + 1.0)
    out = retarget(smplx, driving, reference)
    assert torch.equal(out.shape, reference.shape) and out.num_frames == 8
    frames = render_all(smplx, out, ("normal", "keypoints", "mask", "parts", "scail"), width=128, height=128)
    for mode, video in frames.items():
        assert video.shape[:3] == (8, 128, 128) and video.float().amax() > 0, mode
    assert frames["mask"].float().mean() > 0.01
    bvh = bvh_text(smplx, out)
    assert "ROOT pelvis" in bvh and "JOINT left_index1" in bvh and bvh.count("\n") > 8 + 55


@pytest.mark.slow
def test_cli_tracks_a_photo_retargets_and_renders_with_the_users_files(standin_dir, astronaut_path, tmp_path):
    from emosh.body import EHMTrack
    from emosh.cli import main

    dirs = ["--body-dir", str(standin_dir)]
    ref = tmp_path / "ref.safetensors"
    assert main(["track", str(astronaut_path), "--body", "smplx_flame", *dirs, "--out", str(ref)]) == 0
    track = EHMTrack.load(ref)
    assert track.backend == "smplx_flame" and track.shape.shape == (20,) and bool(track.detected.all())
    moved = tmp_path / "retargeted.safetensors"
    assert main(["retarget", "--driving", str(ref), "--reference", str(ref), "--out", str(moved), *dirs]) == 0
    frames = tmp_path / "frames"
    assert main(["render", str(moved), "--mode", "scail", "--out", str(frames), *dirs]) == 0
    assert len(list(frames.glob("*.png"))) == 1
    assert main(["track", str(astronaut_path), "--body", "smplx_flame", "--out", str(ref)]) == 2  # files missing


def test_flame_pickle_builds_arrays_only(tmp_path):
    from emosh.body.smplx_flame import read_pickle_arrays

    evil = tmp_path / "FLAME_NEUTRAL.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(InputError, match="os.system is not an array type"):
        read_pickle_arrays(evil)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": [1, 2]}, protocol=2))
    assert read_pickle_arrays(plain) == {"a": [1, 2]}
