"""What several test modules build: the one synthetic track, the pack and its nodes as ComfyUI loads them, tiny
diffusers models.

Test modules import from here, never from each other (a test module imported by another runs its module-level
code twice and couples unrelated tests).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType

import torch

from emosh.body import NUM_LANDMARKS, EHMTrack
from emosh.body.camera import default_focal, view_rotation

REPO = Path(__file__).resolve().parents[1]
ANNY_SIZES = {"pose": 103, "expression": 52, "shape": 6, "up_axis": 2}  # format tests need no loaded model
TEXT_DIM = 32


# ---------------------------------------------------------------------------------------------- tracks
def synthetic_track(model=None, frames: int = 6, size: tuple[int, int] = (240, 320), fps: float = 25.0,
                    seed: int = 0, pose_std: float = 0.2, turn_std: float = 0.2, distance: float = 3.0,
                    landmarks: bool = False, **overrides) -> EHMTrack:
    """A person ``distance`` m in front of a 50° camera at ``size`` (so it is in view at any size), with seeded
    random pose, body turn, small moves, expression and confidences that differ every frame (slicing and timing
    errors show). ``model`` None: Anny's sizes without loading Anny. ``landmarks``: random 2D landmarks inside the
    image. ``overrides`` replace any field."""
    g = torch.Generator().manual_seed(seed)
    sizes = ANNY_SIZES if model is None else {"pose": len(model.pose_labels), "up_axis": model.up_axis,
                                              "expression": len(model.expression_labels)}
    height, width = size
    fields = dict(
        backend="anny" if model is None else model.backend,
        backend_version="test" if model is None else model.version,
        shape=torch.full((ANNY_SIZES["shape"],), 0.5) if model is None else model.default_shape().cpu(),
        pose=pose_std * torch.randn(frames, sizes["pose"], 3, generator=g),
        global_orient=turn_std * torch.randn(frames, 3, generator=g),
        translation=0.05 * torch.randn(frames, 3, generator=g),
        expression=0.6 * torch.rand(frames, sizes["expression"], generator=g),
        focal=torch.full((frames,), default_focal(size)),
        cam_R=view_rotation(sizes["up_axis"]).repeat(frames, 1, 1),
        cam_t=torch.tensor([0.0, 0.0, distance]).repeat(frames, 1),
        confidence=torch.rand(frames, NUM_LANDMARKS, generator=g),
        detected=torch.ones(frames, dtype=torch.bool), image_size=size, fps=fps,
        landmarks2d=(torch.rand(frames, NUM_LANDMARKS, 2, generator=g) * torch.tensor([width, height])
                     if landmarks else None),
        meta={"source": f"synthetic seed {seed}"},
    )
    fields.update(overrides)
    return EHMTrack(**fields)


# ---------------------------------------------------------------------------------------------- workflows
MINIMUM_COMFYUI = "0.3.64"  # the pack's own minimum; a workflow needing more says so in extra.emosh.requires_comfyui


def required_comfyui(workflow: dict) -> str:
    """The ComfyUI version a UI-format workflow needs (SCAIL-2's core nodes arrived after 0.3.64)."""
    return workflow.get("extra", {}).get("emosh", {}).get("requires_comfyui", MINIMUM_COMFYUI)


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


# ---------------------------------------------------------------------------------------------- nodes
PACK = "emosh_pack"  # the name the repository root is imported under, as ComfyUI imports custom_nodes/<pack>


class _LibraryAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``emosh_pack.emosh[.x]`` is the very module ``emosh[.x]`` the tests import: one library, one set of classes
    (the nodes reach the library by relative imports, so they would otherwise get a second copy of it)."""

    LIBRARY = f"{PACK}.emosh"

    def find_spec(self, name, path=None, target=None):
        if name == self.LIBRARY or name.startswith(self.LIBRARY + "."):
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(spec.name[len(PACK) + 1:])

    def exec_module(self, module):
        """Nothing to run: the module was executed under its own name."""


def load_pack() -> ModuleType:
    """The repository root imported as a package (its ``__init__.py`` defines ``comfy_entrypoint``)."""
    if PACK not in sys.modules:
        sys.meta_path.insert(0, _LibraryAlias())
        spec = importlib.util.spec_from_file_location(PACK, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = package
        spec.loader.exec_module(package)
    return sys.modules[PACK]


def pack_nodes(module: str = "") -> ModuleType:
    """Our ``nodes`` package (or one of its modules), as a subpackage of the pack: ComfyUI's own top-level ``nodes``
    module is never shadowed."""
    load_pack()
    return importlib.import_module(f"{PACK}.nodes.{module}" if module else f"{PACK}.nodes")


def node_classes() -> dict[str, type]:
    """Node id → V3 node class, for every node of the pack."""
    return {cls.define_schema().node_id: cls for cls in pack_nodes().NODES}


# ---------------------------------------------------------------------------------------------- generation
def tiny_transformer(seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16,
                                 out_channels=16, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=64, num_layers=2,
                                 rope_max_seq_len=64).eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def random_adapter(dim: int = 32, std: float = 0.2):
    from emosh.generate.adapter import MotionAdapter

    adapter = MotionAdapter(dim)
    with torch.no_grad():
        adapter.proj.weight.normal_(0.0, std, generator=torch.Generator().manual_seed(7))
    return adapter


def moving_video(frames: int, size: int = 32) -> torch.Tensor:
    """A smooth moving gradient ``[N, H, W, 3]`` in 0..1."""
    t = torch.linspace(0, 1, frames).view(-1, 1, 1, 1)
    y = torch.linspace(0, 1, size).view(1, -1, 1, 1)
    x = torch.linspace(0, 1, size).view(1, 1, -1, 1)
    return torch.cat([((x + t) % 1).expand(frames, size, size, 1), y.expand(frames, size, size, 1),
                      (0.5 + 0.5 * torch.sin(6 * (x + y + t))).expand(frames, size, size, 1)], dim=-1)


# ---------------------------------------------------------------------------------------------- a real ComfyUI
COMFY_START_TIMEOUT = 240
MODEL_LOADERS = {"UNETLoader": "diffusion_models", "VAELoader": "vae", "CLIPVisionLoader": "clip_vision",
                 "CLIPLoader": "text_encoders"}  # loader node → the model folder its first widget names a file in


def http_get(url: str, timeout: float = 30) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def http_post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
            return response.status, json.loads(body) if body.strip() else {}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def comfy_base_dir(base: Path, pack_link: str, workflows: list[Path]) -> Path:
    """A ComfyUI ``--base-directory``: the pack linked into custom_nodes/, and a placeholder file for every model
    file the workflows name (their combos validate; nothing ever loads them)."""
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / pack_link).symlink_to(REPO, target_is_directory=True)
    for path in workflows:
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"] in MODEL_LOADERS:
                folder = base / "models" / MODEL_LOADERS[node["type"]]
                folder.mkdir(parents=True, exist_ok=True)
                (folder / node["widgets_values"][0]).write_bytes(b"placeholder: validation only, never executed")
    return base


@contextlib.contextmanager
def comfy_server(comfy_path: str, base: Path):
    """A real ComfyUI server (``main.py --cpu``) on a free port over ``base``; yields its URL and log file, and
    stops it (only this process) afterwards."""
    import pytest

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = base / "comfyui.log"
    command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--disable-auto-launch", "--base-directory", str(base), "--database-url", "sqlite:///:memory:"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=comfy_path, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + COMFY_START_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            try:
                http_get(f"{url}/system_stats", timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not answer within {COMFY_START_TIMEOUT}s:\n{log.read_text()[-4000:]}")
                time.sleep(1)
        yield url, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


_VALIDATE_SCRIPT = r"""
import asyncio, json, sys
comfy_path, base, pack_link, prompts_file = sys.argv[1:5]
sys.path.insert(0, comfy_path)
import utils.extra_config  # as main.py does first: claims the name "utils" before comfy/utils.py can
import comfy.cli_args
comfy.cli_args.args.cpu = True
import folder_paths
folder_paths.set_input_directory(base + "/input")
folder_paths.set_output_directory(base + "/output")
for name in ("diffusion_models", "vae", "clip_vision", "text_encoders"):
    folder_paths.add_model_folder_path(name, base + "/models/" + name, is_default=True)
import execution, nodes
asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
assert asyncio.run(nodes.load_custom_node(base + "/custom_nodes/" + pack_link, set(nodes.NODE_CLASS_MAPPINGS)))
results = {}
for name, prompt in json.load(open(prompts_file)).items():
    ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt(name, prompt, None))
    results[name] = {"ok": ok, "error": error, "outputs": sorted(outputs), "node_errors": node_errors}
print("RESULT " + json.dumps(results, default=str))
"""


def comfy_validate_prompts(comfy_path: str, base: Path, pack_link: str, prompts: dict[str, dict]) -> dict:
    """ComfyUI's own ``execution.validate_prompt`` of each API prompt, in a separate ComfyUI process over ``base``:
    name → {"ok", "error", "outputs", "node_errors"}."""
    prompts_file = base / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    done = subprocess.run([sys.executable, "-c", _VALIDATE_SCRIPT, comfy_path, str(base), pack_link,
                           str(prompts_file)], cwd=comfy_path, capture_output=True, text=True, timeout=600)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, f"validation process failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(line[len("RESULT "):])


# ---------------------------------------------------------------------------------------------- SMPL-X stand-in
def tpose_anny(anny) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anny's average body with the arms raised to a T-pose (palms down): (pose [1, J, 3], vertices [V, 3],
    joints [K, 3]) in Anny's world frame. The upper arms turn about the forward axis, in world terms."""
    import roma

    shape = anny.default_shape()
    rest = anny.rest_skeleton(shape)
    zero = anny.zero_motion(1)
    bones = anny.pose_bones(rest, zero["pose"], zero["global_orient"], zero["translation"])
    joints, pose = bones.joints[0], zero["pose"].clone()
    for side in "LR":
        shoulder, wrist = anny.joint_labels.index(f"upperarm01.{side}"), anny.joint_labels.index(f"wrist.{side}")
        arm = torch.nn.functional.normalize(joints[wrist] - joints[shoulder], dim=0)
        lateral = torch.tensor([float(torch.sign(arm[0])), 0.0, 0.0])
        axis = torch.nn.functional.normalize(torch.linalg.cross(arm, lateral), dim=0)
        world = roma.rotvec_to_rotmat(axis * torch.arccos((arm @ lateral).clamp(-1, 1)))
        parent = bones.rotations[0, anny.joint_parents[shoulder]]
        pose[0, shoulder - 1] = roma.rotmat_to_rotvec(parent.T @ world @ parent)
    out = anny(shape, pose, zero["global_orient"], zero["translation"], zero["expression"])
    return pose, out.vertices[0], out.joints[0]


ANNY_TO_SMPLX_AXES = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # Z up, -Y front → Y up, +Z


def _affine_weights(points: torch.Tensor, target: torch.Tensor, k: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [k], weights [k]) of the k points nearest ``target`` whose weighted sum (weights summing to 1) is it."""
    ids = (points - target).norm(dim=1).topk(k, largest=False).indices
    a = torch.cat([points[ids].T, torch.ones(1, k)]).double()
    return ids, (torch.linalg.pinv(a) @ torch.cat([target, torch.ones(1)]).double()).float()


def write_smplx_flame_standin(anny, folder: Path, seed: int = 0) -> Path:
    """The three SMPL-X + FLAME files in their release formats, with made-up but humanlike content: the mesh is
    Anny's T-posed average body, skinning from Anny's, smooth random shape directions, Anny's facial actions as
    FLAME's expression directions, a FLAME head offset from the body's (undone by the eye alignment), one chumpy
    array and a sparse regressor as FLAME 2020 stores them. No licensed data."""
    import pickle

    import numpy as np
    import scipy.sparse

    from emosh.body.landmark_transfer import anny_joint_map
    from emosh.body.smplx_flame import FLAME_SHAPE_SPACE, JOINT_LABELS

    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        _, verts, anny_joints = tpose_anny(anny)
        weights_anny = anny.skinning_weights(torch.arange(anny.num_vertices))
    verts, anny_joints = verts.cpu() @ ANNY_TO_SMPLX_AXES.T, anny_joints.cpu() @ ANNY_TO_SMPLX_AXES.T
    v, n = verts.shape[0], len(JOINT_LABELS)
    joint_of = anny_joint_map(anny, JOINT_LABELS)
    listed = {int(j): k for k, j in reversed(list(enumerate(joint_of.tolist())))}  # first Anny bone per joint
    head = JOINT_LABELS.index("head")
    joints = torch.stack([anny_joints[listed[j]] if j in listed else anny_joints[listed[head]]
                          + torch.tensor([0.0, -0.03, 0.03]) for j in range(n)])  # the jaw: below the skull base
    regressor = torch.zeros(n, v)
    for j in range(n):
        ids, w = _affine_weights(verts, joints[j])
        regressor[j, ids] = w
    weights = torch.zeros(v, n).index_add_(1, joint_of, weights_anny.cpu())

    def smooth_field(points: torch.Tensor, count: int, amplitude: float) -> torch.Tensor:
        freq = 4.0 * torch.randn(count, 3, 3, generator=g)
        phase = 6.3 * torch.rand(count, 3, generator=g)
        return amplitude * torch.sin(torch.einsum("vc,kdc->vdk", points, freq) + phase.T[None])  # [V, 3, count]

    shapedirs = torch.zeros(v, 3, 20)
    low = verts[:, 1] - verts[:, 1].min()
    shapedirs[:, 1, 0] = 0.06 * low  # height
    shapedirs[:, 0, 1], shapedirs[:, 2, 1] = 0.08 * verts[:, 0], 0.08 * verts[:, 2]  # girth
    shapedirs[..., 2:] = smooth_field(verts, 18, 0.004)
    posedirs = np.zeros((v, 3, 9 * (n - 1)), np.float16)
    for name in ("left_elbow", "right_elbow", "left_knee", "right_knee"):
        j = JOINT_LABELS.index(name) - 1
        near = (weights[:, j + 1] > 0.3).float()[:, None, None]
        posedirs[..., 9 * j:9 * j + 9] = (near * smooth_field(verts, 9, 0.003)).numpy().astype(np.float16)
    parents = np.array([2 ** 32 - 1] + [JOINT_LABELS.index(p) for p in _smplx_parent_names()], np.uint32)
    np.savez_compressed(folder / "SMPLX_NEUTRAL.npz", v_template=verts.numpy(), f=anny.faces.cpu().numpy().astype(
        np.uint32), shapedirs=shapedirs.numpy(), posedirs=posedirs, J_regressor=regressor.numpy(),
        weights=weights.numpy(), kintree_table=np.stack([parents, np.arange(n, dtype=np.uint32)]),
        hands_meanl=np.zeros(45, np.float32), hands_meanr=np.zeros(45, np.float32),
        hands_componentsl=np.eye(45, dtype=np.float32), hands_componentsr=np.eye(45, dtype=np.float32))

    region = [JOINT_LABELS.index(x) for x in ("head", "jaw", "left_eye", "right_eye")]
    head_ids = torch.nonzero(torch.isin(weights.argmax(1), torch.tensor(region))).squeeze(1)
    np.save(folder / "SMPL-X__FLAME_vertex_ids.npy", head_ids.numpy().astype(np.int64))
    offset = torch.tensor([0.01, 0.02, -0.015])
    flame_verts = verts[head_ids] + offset
    remap = torch.full((v,), -1, dtype=torch.long)
    remap[head_ids] = torch.arange(len(head_ids))
    faces = remap[anny.faces.cpu()]
    flame_faces = faces[(faces >= 0).all(1)]
    dirs = np.zeros((len(head_ids), 3, 400), np.float16)
    dirs[..., :10] = smooth_field(flame_verts, 10, 0.003).numpy()
    facial = anny.facial_blendshapes.cpu()[:50, head_ids] @ ANNY_TO_SMPLX_AXES.T  # [50, N, 3]
    dirs[..., FLAME_SHAPE_SPACE:FLAME_SHAPE_SPACE + 50] = facial.permute(1, 2, 0).numpy()
    flame_regressor = torch.zeros(5, len(head_ids))
    for row, name in enumerate(("head", "neck", "jaw", "left_eye", "right_eye")):
        ids, w = _affine_weights(flame_verts, joints[JOINT_LABELS.index(name)] + offset)
        flame_regressor[row, ids] = w
    flame = {"v_template": _chumpy_array(flame_verts.numpy()), "f": flame_faces.numpy().astype(np.uint32),
             "shapedirs": dirs, "posedirs": np.zeros((len(head_ids), 3, 36), np.float32),
             "J_regressor": scipy.sparse.csc_matrix(flame_regressor.numpy()),
             "weights": np.eye(5, dtype=np.float32)[np.zeros(len(head_ids), int)],
             "kintree_table": np.array([[2 ** 32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.uint32)}
    try:
        with open(folder / "FLAME_NEUTRAL.pkl", "wb") as f:
            pickle.dump(flame, f, protocol=2)
    finally:
        sys.modules.pop("chumpy.ch", None)
        sys.modules.pop("chumpy", None)
    return folder


def _smplx_parent_names() -> list[str]:
    """SMPL-X's kinematic tree, as the parent name of every joint after the pelvis."""
    body = ["pelvis", "pelvis", "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
            "left_ankle", "right_ankle", "spine3", "spine3", "spine3", "neck", "left_collar", "right_collar",
            "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "head", "head", "head"]
    hands = []
    for side in ("left", "right"):
        for digit in ("index", "middle", "pinky", "ring", "thumb"):
            hands += [f"{side}_wrist", f"{side}_{digit}1", f"{side}_{digit}2"]
    return body + hands


def _chumpy_array(array):
    """An object that pickles the way a chumpy ``Ch`` array does (class ``chumpy.ch.Ch``, state ``{'x': array}``)."""
    module = ModuleType("chumpy.ch")
    ch_class = type("Ch", (), {"__module__": "chumpy.ch"})
    module.Ch = ch_class
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = ModuleType("chumpy"), module  # removed after the dump
    obj = ch_class()
    obj.x = array
    return obj
