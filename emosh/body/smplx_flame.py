"""SMPL-X + FLAME backend (optional, licensed files supplied by the user): the EHM of GUAVA/EMOSH.

The FLAME head (shape β_f, expression ψ) replaces the SMPL-X head in the shaped template, aligned at the eye-joint
midpoint; one SMPL-X linear blend skinning (with its pose correctives) then poses body, jaw, eyes and hands.

Files, looked up in ``<ComfyUI>/models/emosh/body/`` (or ``$EMOSH_MODELS_DIR/body``, or a CLI ``--body-dir``):
    SMPLX_NEUTRAL.npz            https://smpl-x.is.tue.mpg.de (SMPL-X v1.1)
    FLAME_NEUTRAL.pkl            https://flame.is.tue.mpg.de (FLAME 2020, generic_model.pkl renamed)
    SMPL-X__FLAME_vertex_ids.npy SMPL-X ↔ FLAME vertex correspondence (SMPL-X download, "model transfer")
The MediaPipe landmarks on this mesh are transferred from Anny's table at first use (emosh.body.landmark_transfer),
so FLAME's own landmark embedding is not needed. The .npz/.npy are read with ``allow_pickle=False``; the FLAME file
is a pickle, read only from the user's model folder and through an unpickler that builds nothing but numpy /
scipy.sparse arrays (chumpy arrays, as the FLAME 2020 release stores them, become numpy arrays without chumpy).

Shape = 10 SMPL-X betas + 10 FLAME betas. Pose joints (54): 21 body, jaw, left eye, right eye, 15 + 15 hand joints.
Expression = 50 FLAME coefficients. World frame: metres, Y up, the body faces +Z.

Steps of ``forward`` (SMPL-X's, named after its paper):
  1. shaped template  T(β) = T̄ + B_S(β_b), its FLAME head vertices replaced by T̄_f + B_S^f(β_f) (eye-aligned)
  2. joints           J(β) = 𝒥 T(β)
  3. expression and pose correctives  T_P = T(β) + B_E(ψ) + B_P(θ), B_P linear in (R(θ_j) − I) of the 54 joints
  4. skinning         v = Σ_j w_j G_j(θ, J) (T_P − J_j) + J'_j   (the bone tree of :mod:`emosh.body.kinematics`)
"""
from __future__ import annotations

import pickle
import threading
from pathlib import Path
from typing import Iterable

import numpy as np
import roma
import torch

from ..errors import InputError
from ..paths import find_model_file
from .kinematics import BoneTree, PosedBones, RestSkeleton
from .model import BodyModel, BodyOutput, Rig, check_motion

REQUIRED_FILES = ("SMPLX_NEUTRAL.npz", "FLAME_NEUTRAL.pkl", "SMPL-X__FLAME_vertex_ids.npy")
NUM_BETAS = 10
NUM_EXPRESSION = 50
FLAME_SHAPE_SPACE = 300  # FLAME's shapedirs: 300 identity components, then the expression components
_BODY_JOINTS = [
    "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle", "right_ankle", "spine3",
    "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist",
]
_FINGERS = [f"{f}{i}" for f in ("index", "middle", "pinky", "ring", "thumb") for i in (1, 2, 3)]
POSE_LABELS = (_BODY_JOINTS + ["jaw", "left_eye", "right_eye"]
               + [f"left_{f}" for f in _FINGERS] + [f"right_{f}" for f in _FINGERS])
JOINT_LABELS = ["pelvis"] + POSE_LABELS
PART_NAMES = ["head", "neck", "torso", "upper_arm_l", "lower_arm_l", "hand_l", "upper_arm_r", "lower_arm_r",
              "hand_r", "upper_leg_l", "lower_leg_l", "foot_l", "upper_leg_r", "lower_leg_r", "foot_r"]
PART_OF_JOINT = {  # dominant joint → part name, same part vocabulary as the Anny backend
    "pelvis": "torso", "spine1": "torso", "spine2": "torso", "spine3": "torso", "left_collar": "torso",
    "right_collar": "torso", "neck": "neck", "head": "head", "jaw": "head", "left_eye": "head", "right_eye": "head",
    "left_hip": "upper_leg_l", "right_hip": "upper_leg_r", "left_knee": "lower_leg_l", "right_knee": "lower_leg_r",
    "left_ankle": "foot_l", "right_ankle": "foot_r", "left_foot": "foot_l", "right_foot": "foot_r",
    "left_shoulder": "upper_arm_l", "right_shoulder": "upper_arm_r", "left_elbow": "lower_arm_l",
    "right_elbow": "lower_arm_r", "left_wrist": "hand_l", "right_wrist": "hand_r",
}


def _sides(name: str) -> tuple[str, str]:
    return f"left_{name}", f"right_{name}"


RIG = Rig(
    trunk={"spine1": 8.0, "spine2": 8.0, "spine3": 8.0, "neck": 4.0, "head": 2.0},
    neck="neck", clavicle=_sides("collar"), upper_arm=_sides("shoulder"), forearm=_sides("elbow"),
    wrist=_sides("wrist"), upper_leg=_sides("hip"), shin=_sides("knee"), foot=_sides("ankle"),
    fingers=tuple(tuple(tuple(f"{side}_{digit}{k}" for k in (1, 2, 3))
                        for digit in ("thumb", "index", "middle", "ring", "pinky")) for side in ("left", "right")),
    forward=(0.0, 0.0, 1.0),
    palm=((0.0, -1.0, 0.0), (0.0, -1.0, 0.0)),  # the rest T-pose holds the palms flat, facing down
)

_cache: dict[tuple[str, str], "SmplxFlameBody"] = {}
_cache_lock = threading.Lock()


def locate_files(extra_dirs: Iterable[str] = ()) -> dict[str, Path]:
    """Every required file, or MissingModelError naming the folders and the file names."""
    extra_dirs = list(extra_dirs)
    return {name: find_model_file("body", [name], extra_dirs) for name in REQUIRED_FILES}


# ---------------------------------------------------------------------------------------------- file reading
class _ChumpyArray:
    """What a pickled chumpy ``Ch`` becomes: its state, whose ``x`` is the array."""

    def __setstate__(self, state):
        self.state = state


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays, scipy sparse matrices and chumpy stand-ins, and refuses every other global."""

    _NUMPY = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
              ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
              ("numpy._core.multiarray", "scalar"), ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
              ("__builtin__", "object"), ("builtins", "object"), ("_codecs", "encode")}  # bytes in protocol 2

    def find_class(self, module: str, name: str):
        if (module, name) in self._NUMPY:
            module = {"copy_reg": "copyreg", "__builtin__": "builtins"}.get(module, module)
            if module.endswith("multiarray"):  # numpy 1 and 2 pickles alike, without numpy 2's deprecated alias
                return getattr((np._core if hasattr(np, "_core") else np.core).multiarray, name)
            return super().find_class(module, name)
        if module.startswith("scipy.sparse") and name.endswith("_matrix"):
            return super().find_class(module, name)
        if module.startswith("chumpy"):
            return _ChumpyArray
        raise pickle.UnpicklingError(f"{module}.{name} is not an array type; refusing to build it")


def _as_array(value, dtype=np.float32) -> np.ndarray:
    if isinstance(value, _ChumpyArray):
        value = value.state.get("x") if isinstance(value.state, dict) else None
        if value is None:
            raise InputError("a FLAME array is a derived chumpy expression; re-save the file with plain arrays")
    if hasattr(value, "toarray"):  # scipy.sparse
        value = value.toarray()
    return np.asarray(value, dtype=dtype)


def read_pickle_arrays(path: Path) -> dict:
    """The dict of a FLAME pickle, every array as numpy (see :class:`_ArrayUnpickler`)."""
    with open(path, "rb") as f:
        try:
            data = _ArrayUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
            raise InputError(f"{path.name} is not a FLAME pickle this loader can read: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path.name}: expected a dict of arrays, got {type(data).__name__}")
    return data


def _read_npz(path: Path, keys: Iterable[str]) -> dict[str, np.ndarray]:
    """The numeric arrays ``keys`` of an .npz (its object entries, e.g. SMPL-X's name tables, are never read)."""
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in keys if k not in data.files]
        if missing:
            raise InputError(f"{path.name} lacks {missing}: not an SMPL-X model file")
        return {k: data[k] for k in keys}


def _flame_vertex_correspondence(path: Path, n_flame: int, n_smplx: int) -> np.ndarray:
    ids = np.load(path, allow_pickle=False).astype(np.int64).reshape(-1)
    if ids.shape[0] != n_flame or ids.min() < 0 or ids.max() >= n_smplx:
        raise InputError(f"{path.name}: expected {n_flame} SMPL-X vertex ids (one per FLAME vertex) in "
                         f"[0, {n_smplx}), got {ids.shape[0]} in [{ids.min()}, {ids.max()}]")
    return ids


class SmplxFlameBody(BodyModel):
    backend = "smplx_flame"
    shape_default_value = 0.0
    rig = RIG
    expression_kind = "flame"
    shape_scale = 4.0  # betas are in standard deviations; a phenotype unit spans about four of them

    def __init__(self, files: dict[str, Path], device: str | torch.device = "cpu"):
        self.device = dev = torch.device(device)
        s = _read_npz(files["SMPLX_NEUTRAL.npz"],
                      ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table"))
        flame = read_pickle_arrays(files["FLAME_NEUTRAL.pkl"])
        n = len(JOINT_LABELS)
        t = lambda a: torch.as_tensor(_as_array(a), device=dev)  # noqa: E731
        self._template = t(s["v_template"])  # [V, 3]
        v = self._template.shape[0]
        self._shapedirs = t(s["shapedirs"])[..., :NUM_BETAS]  # [V, 3, 10]
        posedirs = t(s["posedirs"])  # [V, 3, 9 (J - 1)]
        self._posedirs = posedirs.reshape(v * 3, -1).T.contiguous()  # [9 (J - 1), 3V]
        self._regressor = t(s["J_regressor"])[:n]  # [J, V]
        self._weights = t(s["weights"])[:, :n]  # [V, J]
        parents = s["kintree_table"][0][:n].astype(np.int64)
        parents[0] = -1
        self.joint_parents = [int(p) for p in parents]
        self.faces = torch.as_tensor(s["f"].astype(np.int64), device=dev)
        self._flame_template = t(flame["v_template"])  # [N, 3]
        dirs = t(flame["shapedirs"])
        if dirs.shape[-1] < FLAME_SHAPE_SPACE + NUM_EXPRESSION:
            raise InputError(f"FLAME_NEUTRAL.pkl has {dirs.shape[-1]} shape components; FLAME 2020 has 400")
        self._flame_shapedirs = dirs[..., :NUM_BETAS]  # [N, 3, 10]
        self._flame_eye_regressor = t(flame["J_regressor"])[3:5]  # [2, N]: left, right eye
        self._head_ids = torch.as_tensor(_flame_vertex_correspondence(
            files["SMPL-X__FLAME_vertex_ids.npy"], self._flame_template.shape[0], v), device=dev)
        expression_dirs = dirs[..., FLAME_SHAPE_SPACE:FLAME_SHAPE_SPACE + NUM_EXPRESSION].permute(2, 0, 1)
        self._facial = torch.zeros(NUM_EXPRESSION, v, 3, device=dev)
        self._facial[:, self._head_ids] = expression_dirs  # [E, V, 3]
        self._eye_joints = [JOINT_LABELS.index("left_eye"), JOINT_LABELS.index("right_eye")]
        if self._posedirs.shape[0] != 9 * (n - 1) or self._weights.shape != (v, n):
            raise InputError("SMPLX_NEUTRAL.npz: pose correctives or skinning weights do not match its 55 joints")

        self.version = "smplx-1.1+flame-2020"
        self.shape_labels = [f"body_beta{i}" for i in range(NUM_BETAS)] + [f"face_beta{i}" for i in range(NUM_BETAS)]
        self.pose_labels = list(POSE_LABELS)
        self.expression_labels = [f"flame_exp{i}" for i in range(NUM_EXPRESSION)]
        self.joint_labels = list(JOINT_LABELS)
        self.up_axis = 1
        self.uvs, self.face_uvs = self._cylinder_uvs()
        dominant = self._weights.argmax(1)
        joint_part = [PART_NAMES.index(PART_OF_JOINT.get(j, "hand_l" if j.startswith("left_") else "hand_r"))
                      for j in self.joint_labels]
        self.part_names = list(PART_NAMES)
        self.part_labels = torch.as_tensor(joint_part, device=dev)[dominant]
        self._tree = BoneTree(self.joint_parents, dev)

    def _cylinder_uvs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Texture coordinates from a cylindrical unwrap (SMPL-X's own UVs live in a separate download)."""
        v = self._template
        theta = torch.atan2(v[:, 0], v[:, 2])
        height = (v[:, 1] - v[:, 1].min()) / (v[:, 1].max() - v[:, 1].min())
        uv = torch.stack([theta / (2 * np.pi) + 0.5, height], 1)
        return uv.to(torch.float32), self.faces.clone()

    # ------------------------------------------------------------------ the BodyModel interface
    def rest_skeleton(self, shape: torch.Tensor) -> RestSkeleton:
        """Steps 1–2 for ``shape`` [S] or [R, S]: the shaped template and its joints (every bone's rest and zero
        pose orientation is the world frame, so A = I)."""
        shape = shape.to(self.device, torch.float32)
        shape = shape[None] if shape.dim() == 1 else shape
        if shape.shape[-1] != len(self.shape_labels):
            raise ValueError(f"smplx_flame body model: shape must have {len(self.shape_labels)} entries "
                             f"(10 body + 10 face betas), got {tuple(shape.shape)}")
        body_betas, face_betas = shape[:, :NUM_BETAS], shape[:, NUM_BETAS:]
        template = self._template[None] + torch.einsum("rb,vcb->rvc", body_betas, self._shapedirs)
        head = self._flame_template[None] + torch.einsum("rb,vcb->rvc", face_betas, self._flame_shapedirs)
        eyes_body = torch.einsum("jv,rvc->rjc", self._regressor[self._eye_joints], template).mean(1)
        eyes_flame = torch.einsum("jv,rvc->rjc", self._flame_eye_regressor, head).mean(1)
        template = template.index_copy(1, self._head_ids, head + (eyes_body - eyes_flame)[:, None])
        joints = torch.einsum("jv,rvc->rjc", self._regressor, template)
        bone_poses = torch.eye(4, device=self.device).repeat(*joints.shape[:2], 1, 1)
        bone_poses[..., :3, 3] = joints
        return self._tree.rest(template, bone_poses, None)

    def pose_bones(self, rest: RestSkeleton, pose: torch.Tensor, global_orient: torch.Tensor,
                   translation: torch.Tensor) -> PosedBones:
        return self._tree.pose(rest, pose, global_orient, translation)

    def skinning_weights(self, vertex_ids: torch.Tensor) -> torch.Tensor:
        return self._weights[vertex_ids.to(self.device)]

    @property
    def facial_blendshapes(self) -> torch.Tensor:
        return self._facial

    def forward(self, shape, pose, global_orient, translation, expression) -> BodyOutput:
        b = check_motion(self, pose, global_orient, translation, expression)
        pose, expression = pose.to(self.device), expression.to(self.device, torch.float32)
        rest = self.rest_skeleton(shape)
        correctives = ((roma.rotvec_to_rotmat(pose) - torch.eye(3, device=self.device)).reshape(b, -1)
                       @ self._posedirs).view(b, -1, 3)
        verts = rest.vertices + torch.einsum("be,evc->bvc", expression, self._facial) + correctives
        bones = self.pose_bones(rest, pose, global_orient.to(self.device), translation.to(self.device))
        flat = torch.cat([bones.skin_rotations.flatten(2), bones.skin_translations], 2)  # [B, J, 12]
        blended = self._weights @ flat  # [B, V, 12]
        skinned = (blended[..., :9].reshape(b, -1, 3, 3) @ verts[..., None])[..., 0] + blended[..., 9:]
        return BodyOutput(vertices=skinned, joints=bones.joints)


def smplx_flame_body(device: str | torch.device = "cpu", extra_dirs: Iterable[str] = ()) -> SmplxFlameBody:
    files = locate_files(extra_dirs)
    key = (str(files["SMPLX_NEUTRAL.npz"].resolve()), str(torch.device(device)))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = SmplxFlameBody(files, device)
        return _cache[key]
