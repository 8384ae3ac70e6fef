"""ComfyUI V3 node schemas and node calls, without ComfyUI (tests/standin/ stands in for ``comfy_api.latest``).

Every node class must have a schema ComfyUI accepts (types, tooltips, defaults within min/max, outputs with names),
custom sockets must connect only to their own type, and the cheap nodes are called for real to check that what they
return follows ComfyUI's tensor conventions. Tracker/retarget/align/preview run in test_workflows.py.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from emosh.body import joints
from emosh.body import BodyModel, EHMTrack
from emosh.errors import InputError, UnsafePathError

from helpers import load_pack, node_classes, pack_nodes, synthetic_track

NODES = node_classes()
common = pack_nodes("common")
EHM_MODEL, EHM_TRACK = common.EHM_MODEL, common.EHM_TRACK

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
EXPECTED = {"EmoshBodyModelLoader", "EmoshTracker", "EmoshTrackSave", "EmoshTrackLoad", "EmoshTrackEdit",
            "EmoshTrackMix", "EmoshFaceCrops", "EmoshExport", "EmoshShapeSwapRetarget", "EmoshSpatialAlign",
            "EmoshMeshConditionRenderer", "EmoshPreviewAnimate", "EmoshHybridMotionInjector", "EmoshSampler"}
CUSTOM = {EHM_MODEL, EHM_TRACK}
REPO = Path(__file__).resolve().parents[1]


def test_every_module_loads_with_no_comfyui_module_but_comfy_api():
    assert set(NODES) == EXPECTED, "a nodes/*.py module failed to import (see the log)"
    assert len({cls.define_schema().display_name for cls in NODES.values()}) == len(EXPECTED)
    assert set(pack_nodes().MODULES) >= {"body", "track", "render", "preview", "generate"}
    probe = ("import sys, helpers; helpers.load_pack(); print(sorted(m for m in sys.modules if "
             "m.split('.')[0] in ('comfy', 'comfy_execution', 'folder_paths', 'nodes')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO / "tests" / "standin"),
                                                          str(REPO)])}
    env.pop("COMFYUI_PATH", None)
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "[]", f"nodes must import ComfyUI lazily: {done}"


def test_entrypoint_registers_the_model_folder_and_lists_every_node(tmp_path, monkeypatch):
    registered = {}
    folder_paths = types.SimpleNamespace(models_dir=str(tmp_path), folder_names_and_paths=registered,
                                         supported_pt_extensions={".safetensors"})
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)
    extension = asyncio.run(load_pack().comfy_entrypoint())
    listed = asyncio.run(extension.get_node_list())
    assert sorted(listed, key=id) == sorted(NODES.values(), key=id)
    assert registered == {"emosh": ([str(tmp_path / "emosh")], {".safetensors"})}


def _inputs(cls) -> dict:
    return {item.id: item for item in cls.define_schema().inputs or []}


@pytest.mark.parametrize("node_id", sorted(EXPECTED))
def test_schema(node_id):
    cls = NODES[node_id]
    schema = cls.define_schema()
    assert schema.category.startswith("EMOSH/") and len(schema.description) > 40 and schema.display_name
    outputs = schema.outputs or []
    assert all(o.display_name and isinstance(o.tooltip, str) and len(o.tooltip) > 10 for o in outputs)
    if not outputs:
        assert schema.is_output_node, "a node without outputs must be an output node"
    params = inspect.signature(cls.execute).parameters
    accepts_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    inputs = _inputs(cls)
    assert len(inputs) == len(schema.inputs), "input names must be unique"
    for name, item in inputs.items():
        kind = item.io_type
        assert isinstance(item.tooltip, str) and len(item.tooltip) > 10, f"{name}: tooltip"
        assert name in params or accepts_var_kw, f"execute() does not take input {name!r}"
        if item.optional and name in params:
            assert params[name].default is None, f"optional input {name} needs a None default"
        assert isinstance(kind, str) and kind == kind.upper()
        if kind == "COMBO":
            assert item.options and all(isinstance(o, str) for o in item.options), f"{name}: combo options"
            if item.default is not None:
                assert item.default in item.options, f"{name}: default not among the options"
        elif kind in ("INT", "FLOAT"):
            assert item.min <= item.default <= item.max, f"{name}: default {item.default} outside the range"
            assert isinstance(item.default, int if kind == "INT" else (int, float))
            assert (item.step or 1) > 0
        elif kind in ("STRING", "BOOLEAN"):
            assert item.default is not None, f"{name}: widget without a default"
    required_params = [n for n, p in params.items() if p.default is p.empty
                       and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    missing = [n for n in required_params if n not in inputs]
    assert not missing, f"execute() requires {missing}, which are not inputs"


def test_custom_sockets_connect_only_to_their_own_type():
    produced, consumed = set(), set()
    for cls in NODES.values():
        produced |= {o.io_type for o in cls.define_schema().outputs or []}
        for item in _inputs(cls).values():
            consumed.add(item.io_type)
            assert item.io_type != "*", "no wildcard inputs: they would accept EHM types anywhere"
            assert "," not in item.io_type or not (set(item.io_type.split(",")) & CUSTOM)
    assert CUSTOM <= produced and CUSTOM <= consumed
    assert produced & CUSTOM == consumed & CUSTOM


# ---------------------------------------------------------------------------------------------- real calls
def _check_outputs(cls, result) -> tuple:
    values = result.args
    kinds = [o.io_type for o in cls.define_schema().outputs or []]
    assert isinstance(values, tuple) and len(values) == len(kinds)
    for kind, value in zip(kinds, values):
        if kind == "IMAGE":
            assert value.dtype == torch.float32 and value.dim() == 4 and value.shape[-1] == 3
            assert value.device.type == "cpu" and 0.0 <= float(value.min()) and float(value.max()) <= 1.0
        elif kind == "MASK":
            assert value.dtype == torch.float32 and value.dim() == 3 and value.device.type == "cpu"
            assert 0.0 <= float(value.min()) and float(value.max()) <= 1.0
        elif kind == EHM_TRACK:
            assert isinstance(value, EHMTrack) and value.device.type == "cpu"
        elif kind == EHM_MODEL:
            assert isinstance(value, BodyModel)
    return values


@pytest.fixture
def comfy_dirs(tmp_path, monkeypatch):
    """Outside ComfyUI the nodes use ./input and ./output."""
    (tmp_path / "input").mkdir()
    (tmp_path / "output").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_body_edit_mix_render_nodes(anny):
    M = NODES
    model = _check_outputs(M["EmoshBodyModelLoader"], M["EmoshBodyModelLoader"].execute("anny", "cpu"))[0]
    assert model is anny, "the body model is cached, not rebuilt"
    track = synthetic_track(anny, frames=4, size=(96, 128))
    before = track.pose.clone()
    edited = _check_outputs(M["EmoshTrackEdit"], M["EmoshTrackEdit"].execute(
        anny, track, 0.5, 1.0, 1, -1, "0 1\n2 1.5 0.1 0", gender=0.0, age=0.2, muscle=0.0, weight=0.0,
        height=-0.1, proportions=0.0))[0]
    assert edited.num_frames == 3 and torch.equal(track.pose, before), "inputs must never be modified"
    assert edited.shape[1] == pytest.approx(0.7) and edited.shape[4] == pytest.approx(0.4)
    with pytest.raises(InputError):
        M["EmoshTrackEdit"].execute(anny, track, 1.0, 1.0, 0, -1, "zoom please", gender=0.0, age=0.0, muscle=0.0,
                                   weight=0.0, height=0.0, proportions=0.0)
    other = synthetic_track(anny, frames=8, fps=50.0, seed=4, size=(96, 128))
    mixed = _check_outputs(M["EmoshTrackMix"], M["EmoshTrackMix"].execute(
        anny, track, 0.0, 0.02, True, True, False, True, 0.0, hands_track=other, face_track=other))[0]
    face_rows = joints.expression_groups(anny)["expression"]  # eyes were not taken: gaze stays the body track's
    assert mixed.num_frames == 4 and torch.allclose(mixed.expression[0, face_rows], other.expression[1, face_rows])
    eyes = joints.expression_groups(anny)["eyes"]
    assert torch.equal(mixed.expression[:, eyes], track.expression[:, eyes])

    hybrid, keypoints, normal, depth, mask, extra = _check_outputs(
        M["EmoshMeshConditionRenderer"],
        M["EmoshMeshConditionRenderer"].execute(anny, track, 64, 48, "dwpose", 3, extra_mode="scail2_mask"))
    assert hybrid.shape == (4, 48, 64, 3) and mask.shape == (4, 48, 64)
    assert torch.equal(extra[mask > 0.5], torch.tensor([0.0, 0.0, 1.0]).expand(int((mask > 0.5).sum()), 3))
    assert float(extra[mask <= 0.5].abs().max()) == 0.0, "scail2_mask: the body in blue on black"
    person = mask > 0.5
    assert 0.02 < float(person.float().mean()) < 0.9, "the person must be in the picture"
    assert float((hybrid[person] - 1.0).abs().mean()) > 0.05, "the shaded mesh is not white"
    assert float(hybrid[~person].mean()) > 0.9, "hybrid background is white"
    assert float(normal[person].std()) > 0.02 and float(depth[person].mean()) > float(depth[~person].mean())


def test_face_crops_node(anny):
    track = synthetic_track(anny, frames=3, size=(120, 160))
    images = torch.rand(3, 60, 80, 3)
    (crops,) = _check_outputs(NODES["EmoshFaceCrops"],
                              NODES["EmoshFaceCrops"].execute(anny, track, images, 64, 1.3, 1.0))
    assert crops.shape == (3, 64, 64, 3)


def test_save_load_export_stay_inside_comfy_folders(anny, comfy_dirs):
    M = NODES
    track = synthetic_track(anny, frames=3)
    saved = M["EmoshTrackSave"].execute(track, "emosh/track")
    assert saved.args == () and saved.ui["text"] == ["emosh/track_00001.safetensors"]
    assert M["EmoshTrackSave"].execute(track, "emosh/track").ui["text"] == ["emosh/track_00002.safetensors"]
    (comfy_dirs / "output" / "emosh" / "track_00001.safetensors").rename(comfy_dirs / "input" / "mine.safetensors")
    assert _inputs(M["EmoshTrackLoad"])["track_file"].options == ["mine.safetensors"]
    (loaded,) = _check_outputs(M["EmoshTrackLoad"], M["EmoshTrackLoad"].execute("mine.safetensors"))
    assert torch.equal(loaded.pose, track.pose) and loaded.fps == track.fps
    fingerprint = M["EmoshTrackLoad"].fingerprint_inputs("mine.safetensors")
    assert M["EmoshTrackLoad"].fingerprint_inputs("mine.safetensors") == fingerprint, "same file, same cache key"
    stat = (comfy_dirs / "input" / "mine.safetensors").stat()
    os.utime(comfy_dirs / "input" / "mine.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert M["EmoshTrackLoad"].fingerprint_inputs("mine.safetensors") != fingerprint, "a rewritten file reruns"
    for bad in ("../output/emosh/track_00002.safetensors", "/etc/passwd", "../../x.safetensors"):
        with pytest.raises(UnsafePathError):
            M["EmoshTrackLoad"].execute(bad)
    with pytest.raises(UnsafePathError):
        M["EmoshTrackSave"].execute(track, "../escape")
    with pytest.raises(UnsafePathError):
        M["EmoshExport"].execute(anny, track, "bvh", "metres", "/tmp/elsewhere")

    out = M["EmoshExport"].execute(anny, track, "bvh+glb", "centimetres", "emosh/dance")
    assert out.ui["text"] == ["emosh/dance_00001.bvh", "emosh/dance_00001.glb"]
    bvh = (comfy_dirs / "output" / "emosh" / "dance_00001.bvh").read_text()
    assert bvh.startswith("HIERARCHY") and "Frames: 3" in bvh
    assert (comfy_dirs / "output" / "emosh" / "dance_00001.glb").read_bytes()[:4] == b"glTF"
    seq = M["EmoshExport"].execute(anny, track, "ply sequence", "metres", "emosh/dance")
    assert seq.ui["text"] == ["emosh/dance_00002"]
    assert len(list((comfy_dirs / "output" / "emosh" / "dance_00002").glob("*.ply"))) == 3


def test_conversions_follow_comfy_conventions():
    image_to_uint8, mask_to_float, uint8_to_image = common.image_to_uint8, common.mask_to_float, common.uint8_to_image
    frames = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    image = uint8_to_image(frames)
    assert image.shape == (2, 5, 7, 3) and image.dtype == torch.float32
    assert np.array_equal(image_to_uint8(image), frames)
    rgba = torch.cat([image, torch.ones(2, 5, 7, 1)], -1)
    assert np.array_equal(image_to_uint8(rgba), frames)
    resized = mask_to_float(torch.ones(1, 10, 14), 2, 5, 7)
    assert resized.shape == (2, 5, 7) and float(resized.min()) == 1.0
    with pytest.raises(InputError):
        image_to_uint8(torch.rand(5, 7, 3))
    with pytest.raises(InputError):
        mask_to_float(torch.ones(3, 5, 7), 2, 5, 7)


def test_long_nodes_report_progress_and_honour_cancel(anny, monkeypatch):
    """With ComfyUI's progress/interrupt API present, the renderer updates the bar per batch and stops on cancel."""
    import types

    class Interrupted(Exception):
        pass

    calls = {"updates": [], "checks": 0}

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            calls["updates"].append((value, total or self.total))

    def throw_exception_if_processing_interrupted():
        calls["checks"] += 1
        if calls["checks"] > 2:  # the user presses Cancel during the third batch
            raise Interrupted()

    comfy = types.ModuleType("comfy")
    comfy.utils = types.SimpleNamespace(ProgressBar=ProgressBar)
    comfy.model_management = types.SimpleNamespace(
        throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted)
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.utils", comfy.utils)
    monkeypatch.setitem(sys.modules, "comfy.model_management", comfy.model_management)
    track = synthetic_track(anny, frames=8, size=(48, 64))
    with pytest.raises(Interrupted):
        NODES["EmoshMeshConditionRenderer"].execute(anny, track, 0, 0, "wan_animate", 2)
    assert calls["updates"] == [(2, 8), (4, 8)], "progress per batch until the cancel"
