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
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch

from .kinematics import BoneTree, PosedBones, RestSkeleton
from .model import BodyModel, BodyOutput, Rig, check_motion

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



def _sides(name: str) -> tuple[str, str]:
    return f"{name}.L", f"{name}.R"


RIG = Rig(
    trunk={"spine04": 8.0, "spine03": 8.0, "spine02": 8.0, "spine01": 8.0, "neck01": 4.0, "neck03": 4.0, "head": 2.0},
    neck="neck01", clavicle=_sides("clavicle"), upper_arm=_sides("upperarm01"), forearm=_sides("lowerarm01"),
    wrist=_sides("wrist"), upper_leg=_sides("upperleg01"), shin=_sides("lowerleg01"), foot=_sides("foot"),
    fingers=tuple(tuple(tuple(f"finger{d}-{k}.{s}" for k in (1, 2, 3)) for d in range(1, 6)) for s in "LR"),
    forward=(0.0, -1.0, 0.0),
    palm=((-1.0, 0.0, 0.0), (1.0, 0.0, 0.0)),  # the rest arms hang with the palms against the thighs
)

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
    rig = RIG
    expression_kind = "arkit"
    shape_range = (0.0, 1.0)
    expression_range = (0.0, 1.0)

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
        self._tree = BoneTree(self.joint_parents, self.device)
        self._build_sparse_skinning()
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
        expression = expression.to(self.device)
        differentiable = torch.is_grad_enabled() and any(
            t.requires_grad for t in (shape, pose, global_orient, translation, expression))
        shared_rest = phenotypes.shape[0] == 1 and not differentiable
        rest, lifted = self._cached_rest(phenotypes) if shared_rest else (self.rest_skeleton(phenotypes), None)
        # the global rigid motion is folded into every bone (skinning weights sum to one)
        bones = self.pose_bones(rest, pose.to(self.device), global_orient.to(self.device), translation.to(self.device))
        transforms = bones.matrices()
        if shared_rest:
            verts = self._skin_shared_rest(lifted, expression, transforms)
        else:
            face_offsets = (expression @ self._facial_blendshapes).view(b, -1, 3)
            verts = self._skin(rest.vertices + face_offsets, transforms)
        return BodyOutput(vertices=verts, joints=bones.joints)

    def rest_skeleton(self, shape: torch.Tensor) -> RestSkeleton:
        """Anny's rest mesh and skeleton for phenotypes [S] or [R, S] (no local changes, no facial actions)."""
        m = self._model
        phenotypes = shape.to(self.device, torch.float32)
        phenotypes = phenotypes[None] if phenotypes.dim() == 1 else phenotypes
        no_face = torch.zeros(1, len(self.expression_labels), device=self.device)
        no_local = torch.zeros(1, len(m.local_change_labels), device=self.device)
        rest = m.get_rest_model(m._get_phenotype_blendshape_coefficients(phenotypes, no_local, no_face))
        return self._tree.rest(rest["rest_vertices"], rest["rest_bone_poses"], m.reference_bone_orientations)

    def pose_bones(self, rest: RestSkeleton, pose: torch.Tensor, global_orient: torch.Tensor,
                   translation: torch.Tensor) -> PosedBones:
        return self._tree.pose(rest, pose, global_orient, translation)

    def skinning_weights(self, vertex_ids: torch.Tensor) -> torch.Tensor:
        from anny.skinning.skinning import dense_bone_weights  # deferred like every anny import

        m = self._model
        ids = vertex_ids.to(m.vertex_bone_weights.device)
        return dense_bone_weights(m.vertex_bone_weights[ids].to(self.device, torch.float32),
                                  m.vertex_bone_indices[ids].to(self.device).long(), len(self.joint_labels))

    @property
    def facial_blendshapes(self) -> torch.Tensor:
        return self._facial_blendshapes.view(len(self.expression_labels), -1, 3)

    def _cached_rest(self, phenotypes: torch.Tensor) -> tuple[RestSkeleton, torch.Tensor]:
        """Rest skeleton of one shape plus its lifted skinning matrix, kept for the next call with the same shape
        (a track has one shape: rendering and animating pose it thousands of times). Not for gradients."""
        key = tuple(phenotypes.flatten().tolist())
        cached = self._last_rest
        if cached is None or cached[0] != key:
            rest = self.rest_skeleton(phenotypes)
            cached = self._last_rest = (key, (rest, self._lift_rest(rest.vertices[0])))
        return cached[1]

    def _build_sparse_skinning(self) -> None:
        """Sparse forms of the skinning weights for :meth:`_skin_shared_rest`.

        A vertex has up to 9 bone weights but only 2.5 non-zero on average. ``_rest_pairs`` lists the non-zero
        (vertex, bone, weight) pairs in vertex order; ``_face_weights`` is the dense weight matrix of the H head
        vertices that facial actions move over the few bones (``_face_bones``) that hold them.
        """
        from anny.skinning.skinning import dense_bone_weights  # deferred like every anny import

        m = self._model
        weights, bones = m.vertex_bone_weights, m.vertex_bone_indices.long()
        nonzero = weights > 0
        vertex = torch.nonzero(nonzero)[:, 0]
        self._rest_pairs = (vertex.to(self.device), bones[nonzero].to(self.device),
                            weights[nonzero].to(self.device, torch.float32))
        pairs_per_vertex = nonzero.sum(1)
        self._rest_crow = torch.cat([pairs_per_vertex.new_zeros(1), 4 * pairs_per_vertex.cumsum(0)]).to(self.device)
        self._rest_cols = (4 * bones[nonzero][:, None] + torch.arange(4)).flatten().to(self.device)
        facial = self._facial_blendshapes.view(len(self.expression_labels), -1, 3)
        moved = facial.abs().amax(dim=(0, 2)) > 0
        self._face_vertices = torch.nonzero(moved)[:, 0].to(self.device)
        self._face_blendshapes = facial[:, moved]
        face_weights = dense_bone_weights(weights[moved].float(), bones[moved], len(self.joint_labels)).cpu()
        self._face_bones = torch.nonzero(face_weights.sum(0) > 0)[:, 0].to(self.device)  # 14 of the 104
        self._face_weights = face_weights[:, self._face_bones.cpu()].to(self.device)
        self._last_rest: tuple[tuple[float, ...], tuple[RestSkeleton, torch.Tensor]] | None = None

    def _lift_rest(self, rest_vertices: torch.Tensor) -> torch.Tensor:
        """The sparse [V, 4J] matrix L with L[v, 4j + c] = w_vj [x_v; 1]_c for rest vertices x [V, 3]."""
        vertex, bone, weight = self._rest_pairs
        homogeneous = torch.nn.functional.pad(rest_vertices, (0, 1), value=1.0)
        values = (weight[:, None] * homogeneous[vertex]).flatten()
        size = (rest_vertices.shape[0], 4 * len(self.joint_labels))
        with warnings.catch_warnings():  # torch calls sparse CSR "beta"; products with dense matrices are all we use
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
            return torch.sparse_csr_tensor(self._rest_crow, self._rest_cols, values, size, check_invariants=False)

    def _skin_shared_rest(self, lifted_rest: torch.Tensor, expression: torch.Tensor,
                          bone_transforms: torch.Tensor) -> torch.Tensor:
        """Linear blend skinning of one rest mesh under B poses, without per-vertex blended matrices.

        With x = rest vertex + facial offset f and T_bj = [R_bj | t_bj]:
            skin_b(x) = sum_j (w_j [x; 1]) . T_bj  +  sum_j w_j R_bj f_b.
        The first term is one sparse [V, 4J] x [4J, 3B] product (``lifted_rest``, see :meth:`_lift_rest`) shared
        by every frame; the second is needed on the head vertices only. Forward only (no gradients).
        """
        b, j = bone_transforms.shape[:2]
        transforms = bone_transforms[..., :3, :].permute(1, 3, 0, 2).reshape(4 * j, 3 * b)  # [(j, col), (b, row)]
        skinned = (lifted_rest @ transforms).view(-1, b, 3)  # [V, B, 3]
        offsets = torch.einsum("be,ehc->hbc", expression, self._face_blendshapes)  # [H, B, 3]
        face_bones = bone_transforms[:, self._face_bones, :3, :3].permute(1, 0, 2, 3).reshape(-1, 9 * b)
        rotations = self._face_weights @ face_bones  # [H, (B, 3, 3)] blended rotations
        head = (rotations.view(-1, b, 3, 3) @ offsets[..., None])[..., 0]  # [H, B, 3]
        skinned.index_add_(0, self._face_vertices, head)
        vertices = skinned.new_empty(b, skinned.shape[0], 3)
        for start in range(0, skinned.shape[0], 1024):  # blocked transpose: about 3x faster than one strided copy
            vertices[:, start:start + 1024] = skinned[start:start + 1024].transpose(0, 1)
        return vertices

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
