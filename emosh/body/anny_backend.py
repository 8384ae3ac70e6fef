"""Anny backend (default): Apache-2.0 body model whose assets ship inside the ``anny`` wheel.

Shape  = the 6 default phenotypes (gender, age, muscle, weight, height, proportions), each in [0, 1].
Motion = 103 local bone rotations (every Anny bone except ``root``: body, toes, fingers, eyes) as axis-angle,
         52 ARKit facial actions (the jaw opens through ``jawOpen``; the "anny" rig has no jaw bone),
         global orientation + translation applied about the model origin (at the pelvis).
World frame: metres, Z up, the body faces -Y.
"""
from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import roma
import torch

from .model import BodyModel, BodyOutput, check_motion

PART_NAMES = [
    "head", "neck", "torso",
    "upper_arm_l", "lower_arm_l", "hand_l",
    "upper_arm_r", "lower_arm_r", "hand_r",
    "upper_leg_l", "lower_leg_l", "foot_l",
    "upper_leg_r", "lower_leg_r", "foot_r",
]

_BONE_PREFIX_TO_PART = [  # first match wins; side suffix appended for .L/.R bones
    ("head", "head"), ("eye", "head"), ("neck", "neck"),
    ("spine", "torso"), ("root", "torso"), ("pelvis", "torso"), ("clavicle", "torso"),
    ("shoulder", "upper_arm"), ("upperarm", "upper_arm"), ("lowerarm", "lower_arm"),
    ("wrist", "hand"), ("finger", "hand"), ("metacarpal", "hand"),
    ("upperleg", "upper_leg"), ("lowerleg", "lower_leg"), ("foot", "foot"), ("toe", "foot"),
]

_cache: dict[str, "AnnyBody"] = {}
_cache_lock = threading.Lock()
_skinning_pool = ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()), thread_name_prefix="emosh-lbs")


def _reuse_skinning_kernel() -> None:
    """Make anny's ``get_kernel`` return the same warp kernel for the same settings (it is a pure factory)."""
    from anny.skinning import warp_skinning

    if not hasattr(warp_skinning.get_kernel, "cache_info"):
        warp_skinning.get_kernel = functools.lru_cache(maxsize=None)(warp_skinning.get_kernel)


def bone_part(bone: str) -> str:
    """Body-part name of an Anny bone (``upperarm01.L`` → ``upper_arm_l``)."""
    for prefix, part in _BONE_PREFIX_TO_PART:
        if bone.startswith(prefix):
            if part in ("head", "neck", "torso"):
                return part
            return f"{part}_{bone[-1].lower()}"
    raise KeyError(f"No body part for Anny bone {bone!r}")


class AnnyBody(BodyModel):
    backend = "anny"
    shape_default_value = 0.5

    def __init__(self, device: str | torch.device = "cpu"):
        import anny  # deferred: building Anny takes seconds (about a minute the very first time)

        self.version = anny.__version__
        self.device = torch.device(device)
        self._model = anny.Anny(facial_actions="all").to(dtype=torch.float32, device=self.device)
        self._model.eval()
        for p in self._model.parameters():
            p.requires_grad_(False)
        m = self._model
        self.shape_labels = list(m.phenotype_labels)
        self.expression_labels = list(m.facial_action_labels)
        self.joint_labels = list(m.bone_labels)
        self.pose_labels = self.joint_labels[1:]
        self.up_axis = 2
        self.joint_parents = [int(p) for p in m.bone_parents]
        self.faces = m.get_triangular_faces().to(self.device, torch.int64)
        self.uvs = m.texture_coordinates.to(self.device, torch.float32)
        self.face_uvs = m.face_texture_coordinate_indices.to(self.device, torch.int64)
        dominant_bone = m.vertex_bone_indices.gather(1, m.vertex_bone_weights.argmax(1, keepdim=True))[:, 0]
        bone_to_part = torch.tensor([PART_NAMES.index(bone_part(b)) for b in self.joint_labels], device=self.device)
        self.part_names = list(PART_NAMES)
        self.part_labels = bone_to_part[dominant_bone.to(self.device)]
        # Facial actions move vertices only (their bone-head and bone-orientation blendshapes are zero), so the
        # rest skeleton depends on the phenotypes alone and facial offsets are a plain linear map.
        n_face = len(self.expression_labels)
        n_pheno = self._model.blendshapes.shape[0] - n_face - 2 * len(self._model.local_change_labels)
        self._facial_blendshapes = self._model.blendshapes[n_pheno:n_pheno + n_face].reshape(n_face, -1)
        # anny makes a new warp kernel object on every skinning call; two calls at once (two ComfyUI requests, two
        # threads) then race inside warp ("'Adjoint' object has no attribute 'tid_extent_limit_candidate'").
        # One cached kernel, compiled here single-threaded, removes the race and the per-call code generation.
        _reuse_skinning_kernel()
        self.rest()

    def forward(self, shape, pose, global_orient, translation, expression) -> BodyOutput:
        b = check_motion(self, pose, global_orient, translation, expression)
        shape = shape.to(self.device, torch.float32)
        phenotypes = shape[None] if shape.dim() == 1 else shape
        if phenotypes.shape[-1] != len(self.shape_labels):
            raise ValueError(f"anny body model: shape must have {len(self.shape_labels)} phenotypes "
                             f"{self.shape_labels}, got {tuple(shape.shape)}")
        m = self._model
        deltas = torch.eye(4, device=self.device).repeat(b, len(self.joint_labels), 1, 1)
        deltas[:, 1:, :3, :3] = roma.rotvec_to_rotmat(pose.to(self.device))
        no_face = torch.zeros(1, len(self.expression_labels), device=self.device)
        no_local = torch.zeros(1, len(m.local_change_labels), device=self.device)
        rest = m.get_rest_model(m._get_phenotype_blendshape_coefficients(phenotypes, no_local, no_face))
        face_offsets = (expression.to(self.device) @ self._facial_blendshapes).view(b, -1, 3)
        rest_vertices = rest["rest_vertices"] + face_offsets
        bone_transforms, bone_poses = m.get_bone_transforms(deltas, rest["rest_bone_poses"])
        # Skinning weights sum to one, so the global rigid motion can be folded into every bone transform.
        rigid = torch.eye(4, device=self.device).repeat(b, 1, 1)
        rigid[:, :3, :3] = roma.rotvec_to_rotmat(global_orient.to(self.device))
        rigid[:, :3, 3] = translation.to(self.device)
        verts = self._skin(rest_vertices, rigid[:, None] @ bone_transforms)
        joints = (rigid[:, None] @ bone_poses)[..., :3, 3]
        return BodyOutput(vertices=verts, joints=joints)

    def _skin(self, rest_vertices: torch.Tensor, bone_transforms: torch.Tensor) -> torch.Tensor:
        """Anny's warp LBS kernel. On CPU a launch uses one core, so large batches are split over the cores (safe
        since the kernel is built once, see ``_reuse_skinning_kernel``)."""
        skin = self._model.get_skinned_vertices
        workers = _skinning_pool._max_workers
        if self.device.type != "cpu" or workers < 2 or rest_vertices.shape[0] < 8:
            return skin(rest_vertices, bone_transforms)
        chunks = zip(rest_vertices.chunk(workers), bone_transforms.chunk(workers))
        return torch.cat(list(_skinning_pool.map(lambda args: skin(*args), chunks)))


def anny_body(device: str | torch.device = "cpu") -> AnnyBody:
    """The process-wide Anny model for ``device`` (built once; never mutated by calls)."""
    key = str(torch.device(device))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = AnnyBody(device)
        return _cache[key]
