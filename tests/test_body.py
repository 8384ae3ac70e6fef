"""Expressive Human Model: forward shapes, determinism, shape/pose separation, facial locality, backends."""
from __future__ import annotations

import pytest
import torch

from emosh.body import load_body_model
from emosh.errors import MissingModelError


def _random_motion(model, frames: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    motion = model.zero_motion(frames)
    motion["pose"] = 0.3 * torch.randn(motion["pose"].shape, generator=g)
    motion["expression"] = torch.rand(motion["expression"].shape, generator=g)
    motion["global_orient"] = 0.5 * torch.randn(frames, 3, generator=g)
    motion["translation"] = torch.randn(frames, 3, generator=g)
    return motion


def test_anny_layout(anny):
    assert anny.num_vertices == 13718
    assert anny.faces.shape == (27420, 3) and anny.faces.dtype == torch.int64
    assert int(anny.faces.max()) == anny.num_vertices - 1
    assert len(anny.pose_labels) == 103 and len(anny.joint_labels) == 104
    assert len(anny.expression_labels) == 52 and "jawOpen" in anny.expression_labels
    assert anny.shape_labels == ["gender", "age", "muscle", "weight", "height", "proportions"]
    assert anny.face_uvs.shape == anny.faces.shape and float(anny.uvs.min()) >= 0 and float(anny.uvs.max()) <= 1
    # every part is used, and hands hold the finger vertices
    counts = torch.bincount(anny.part_labels, minlength=len(anny.part_names))
    assert (counts > 0).all()
    assert counts[anny.part_index("hand_l")] > 1000
    # parents precede children (needed by BVH export and forward kinematics)
    assert all(p < i for i, p in enumerate(anny.joint_parents))


def test_forward_shapes_and_determinism(anny):
    motion = _random_motion(anny, 4)
    shape = torch.rand(6, generator=torch.Generator().manual_seed(1))
    a = anny(shape, **motion)
    b = anny(shape, **motion)
    assert a.vertices.shape == (4, 13718, 3) and a.joints.shape == (4, 104, 3)
    assert a.vertices.dtype == torch.float32
    assert torch.equal(a.vertices, b.vertices) and torch.equal(a.joints, b.joints)
    assert torch.isfinite(a.vertices).all()


def test_matches_anny_reference_forward(anny):
    """Our decomposed forward (shared rest skeleton + facial offsets) equals Anny's own forward."""
    import roma

    from emosh.body.model import apply_global

    motion = _random_motion(anny, 3, seed=5)
    shape = torch.rand(6, generator=torch.Generator().manual_seed(2))
    ours = anny(shape, **motion).vertices
    deltas = torch.eye(4).repeat(3, 104, 1, 1)
    deltas[:, 1:, :3, :3] = roma.rotvec_to_rotmat(motion["pose"])
    ref = anny._model(pose_parameters=deltas, phenotype_kwargs=shape[None], facial_actions=motion["expression"])
    ref = apply_global(ref["vertices"], motion["global_orient"], motion["translation"])
    assert (ours - ref).abs().max() < 1e-4


def test_bone_kinematics_match_anny(anny):
    """One kinematics (emosh.body.kinematics) for the mesh, the tracker and BVH: its joints and zero-pose-relative
    bone rotations equal those of anny's own get_bone_transforms chain."""
    import roma

    motion = _random_motion(anny, 4, seed=9)
    shape = torch.rand(6, generator=torch.Generator().manual_seed(4))
    bones = anny.pose_bones(anny.rest_skeleton(shape), motion["pose"], motion["global_orient"],
                            motion["translation"])
    m = anny._model
    rest = m.get_rest_model(m._get_phenotype_blendshape_coefficients(
        shape[None], torch.zeros(1, len(m.local_change_labels)), torch.zeros(1, len(anny.expression_labels))))
    deltas = torch.eye(4).repeat(4, len(anny.joint_labels), 1, 1)
    deltas[:, 1:, :3, :3] = roma.rotvec_to_rotmat(motion["pose"])
    _, poses = m.get_bone_transforms(deltas, rest["rest_bone_poses"])
    glob = roma.rotvec_to_rotmat(motion["global_orient"])
    joints = (poses[..., :3, 3] @ glob.transpose(1, 2)) + motion["translation"][:, None]
    reference = m.reference_bone_orientations
    reference = rest["rest_bone_poses"][0, :, :3, :3] if reference is None else reference
    rotations = glob[:, None] @ poses[..., :3, :3] @ reference.transpose(-1, -2)
    assert (bones.joints - joints).abs().max() < 1e-5
    assert (bones.rotations - rotations).abs().max() < 1e-5
    assert (bones.joints - anny(shape, **motion).joints).abs().max() < 1e-5


def test_skinning_paths_agree(anny):
    """The sparse shared-rest path (one shape, no gradients, rest mesh cached per shape) gives the vertices of the
    differentiable per-frame path, also when shapes alternate between calls."""
    motion = _random_motion(anny, 5, seed=7)
    shapes = torch.rand(2, 6, generator=torch.Generator().manual_seed(3))
    for shape in (shapes[0], shapes[1], shapes[0]):
        with torch.no_grad():
            fast = anny(shape, **motion).vertices
        per_frame = anny(shape.expand(5, 6), **motion).vertices
        differentiable = anny(shape.clone().requires_grad_(), **motion).vertices
        assert differentiable.requires_grad and not fast.requires_grad
        assert (fast - per_frame).abs().max() < 1e-5
        assert (fast - differentiable).abs().max() < 1e-5
    assert (anny(shapes[0], **motion).vertices - anny(shapes[1], **motion).vertices).abs().max() > 0.01


def test_shape_changes_vertices_not_motion(anny):
    motion = anny.zero_motion(1)
    short = anny(torch.tensor([0.5, 0.5, 0.5, 0.5, 0.1, 0.5]), **motion)
    tall = anny(torch.tensor([0.5, 0.5, 0.5, 0.5, 0.9, 0.5]), **motion)
    up = anny.up_axis
    height = lambda v: float(v[0, :, up].max() - v[0, :, up].min())
    assert height(tall.vertices) > height(short.vertices) + 0.1
    heavy = anny(torch.tensor([0.5, 0.5, 0.5, 1.0, 0.5, 0.5]), **motion)
    light = anny(torch.tensor([0.5, 0.5, 0.5, 0.0, 0.5, 0.5]), **motion)
    assert (heavy.vertices - light.vertices).norm(dim=-1).max() > 0.02
    torso = anny.part_labels == anny.part_index("torso")
    depth = lambda v: float(v[0, torso, 1].max() - v[0, torso, 1].min())
    assert depth(heavy.vertices) > depth(light.vertices) * 1.05  # measured 0.245 m vs 0.225 m


def test_pose_moves_only_descendants(anny):
    motion = anny.zero_motion(1)
    rest = anny(anny.default_shape(), **motion)
    elbow = anny.pose_labels.index("lowerarm01.L")
    motion["pose"][0, elbow] = torch.tensor([0.0, 0.0, 1.2])
    bent = anny(anny.default_shape(), **motion)
    moved = (bent.vertices - rest.vertices).norm(dim=-1)[0] > 1e-4
    parts = set(anny.part_labels[moved].tolist())
    allowed = {anny.part_index(p) for p in ("lower_arm_l", "hand_l", "upper_arm_l")}
    assert moved.sum() > 500 and parts <= allowed


def test_facial_action_moves_only_head(anny):
    motion = anny.zero_motion(1)
    rest = anny(anny.default_shape(), **motion)
    motion["expression"][0, anny.expression_labels.index("jawOpen")] = 1.0
    open_jaw = anny(anny.default_shape(), **motion)
    shift = (open_jaw.vertices - rest.vertices).norm(dim=-1)[0]
    assert (shift > 1e-5).sum() > 1000 and float(shift.max()) > 0.02  # the jaw drops by centimetres
    # beyond a sub-millimetre blend at the collar, only head and neck vertices move
    assert set(anny.part_labels[shift > 1e-3].tolist()) <= {anny.part_index("head"), anny.part_index("neck")}
    assert torch.equal(open_jaw.joints, rest.joints)  # expressions never move the skeleton


def test_global_transform(anny):
    motion = anny.zero_motion(1)
    rest = anny(anny.default_shape(), **motion)
    motion["translation"][0] = torch.tensor([1.0, 2.0, 3.0])
    moved = anny(anny.default_shape(), **motion)
    assert torch.allclose(moved.vertices - rest.vertices, torch.tensor([1.0, 2.0, 3.0]).expand_as(rest.vertices),
                          atol=1e-5)


def test_bad_motion_shape_is_clear(anny):
    motion = anny.zero_motion(2)
    motion["pose"] = motion["pose"][:, :50]
    with pytest.raises(ValueError, match="pose must have shape"):
        anny(anny.default_shape(), **motion)


def test_unknown_backend():
    with pytest.raises(ValueError, match="Unknown body model backend"):
        load_body_model("smpl-42")


def test_smplx_flame_missing_files_names_folder_and_files(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOSH_MODELS_DIR", str(tmp_path))
    with pytest.raises(MissingModelError) as info:
        load_body_model("smplx_flame", model_dirs=[str(tmp_path / "custom")])
    message = str(info.value)
    assert "SMPLX_NEUTRAL.npz" in message and str(tmp_path / "body") in message
    assert str(tmp_path / "custom" / "body") in message


def test_smplx_flame_real_files_when_present():
    from emosh.body.smplx_flame import locate_files

    try:
        locate_files()
    except MissingModelError:
        pytest.skip("SMPL-X/FLAME files are not installed in models/emosh/body (licensed, user-supplied)")
    model = load_body_model("smplx_flame")
    out = model(model.default_shape(), **model.zero_motion(2))
    assert out.vertices.shape == (2, 10475, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_anny_runs_on_cuda(anny):
    gpu = load_body_model("anny", "cuda")
    motion = {k: v.cuda() for k, v in _random_motion(gpu, 2).items()}
    out = gpu(gpu.default_shape(), **motion)
    cpu = anny(anny.default_shape(), **{k: v.cpu() for k, v in motion.items()})
    assert out.vertices.is_cuda and (out.vertices.cpu() - cpu.vertices).abs().max() < 1e-3
