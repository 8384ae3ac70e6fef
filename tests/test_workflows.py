"""The shipped workflows (workflows/*.json, ComfyUI frontend "UI" format), checked without ComfyUI.

Structure and links are checked against our node classes and against the input lists of ComfyUI 0.3.64's core nodes
(tests/data/core-nodes-0.3.64.json: interface facts from GET /object_info of a stock ComfyUI 0.3.64; workflows that need a
newer ComfyUI, e.g. SCAIL-2's nodes, are checked against tests/data/core-nodes-0.27.0.json). The CPU workflow is then
converted to ComfyUI's API format and executed headless through our node classes on a real clip, with small
stand-ins for the five core nodes it uses (load image/video, frame cut, create/save video).

``ui_to_api`` is also used by tests/comfyui/ to submit the workflows to a real ComfyUI.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import MINIMUM_COMFYUI, node_classes, pack_nodes, required_comfyui

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
CPU_WORKFLOW = REPO / "workflows" / "EMOSH 1 Preview on CPU (no model files).json"  # runs without model files
# Interface facts (GET /object_info of a stock ComfyUI, no custom nodes) per version a workflow may require.
CORE_FILES = {version: Path(__file__).parent / "data" / f"core-nodes-{version}.json" for version in ("0.3.64", "0.27.0")}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # exist in the frontend only, never executed
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_WIDGETS = {("LoadImage", "image"), ("LoadVideo", "file")}  # the frontend adds an "upload" widget after these
FILE_COMBOS = {"image", "file", "unet_name", "clip_name", "vae_name", "ckpt_name", "lora_name", "track_file",
               "adapter"}  # options depend on the user's files
MUTED = {2, 4}  # node modes: never / bypass


WIDGET_ATTRIBUTES = {"default": "default", "min": "min", "max": "max", "step": "step", "multiline": "multiline",
                     "control_after_generate": "control_after_generate", "force_input": "forceInput"}


# ---------------------------------------------------------------------------------------------- schemas
def _normalise_ours(cls) -> dict:
    """Our V3 schema in the core list's form: {"required": {name: {"type": ..., ...}}, "order": [...]}."""
    schema = cls.define_schema()
    outputs = schema.outputs or []
    out: dict = {"required": {}, "optional": {}, "order": [], "output": [o.io_type for o in outputs],
                 "output_name": [o.display_name for o in outputs]}
    for item in schema.inputs or []:
        section = "optional" if item.optional else "required"
        entry = {"type": item.io_type}
        if item.io_type == "COMBO":
            entry["options"] = list(item.options)
        entry.update({key: getattr(item, attribute) for attribute, key in WIDGET_ATTRIBUTES.items()
                      if getattr(item, attribute, None) is not None})
        out[section][item.id] = entry
        out["order"].append((section, item.id))
    return out


def _normalise_core(info: dict) -> dict:
    out = {"required": info.get("required", {}), "optional": info.get("optional", {}), "order": [],
           "output": info["output"], "output_name": info["output_name"]}
    for section in ("required", "optional"):
        out["order"] += [(section, n) for n in info.get("input_order", {}).get(section, [])]
    return out


def _normalise_live(info: dict) -> dict:
    """One node of a live ``GET /object_info`` ({"input": {"required": {name: [type, options]}}}, V1 or V3 combos)."""
    out: dict = {"required": {}, "optional": {}, "order": [], "output": info["output"],
                 "output_name": info["output_name"]}
    for section in ("required", "optional"):
        for name, value in info["input"].get(section, {}).items():
            kind, options = value[0], (value[1] if len(value) > 1 else {})
            if isinstance(kind, list):
                entry = {"type": "COMBO", **options, "options": kind}
            else:
                entry = {"type": kind, **options}
            out[section][name] = entry
        out["order"] += [(section, n) for n in info.get("input_order", {}).get(section, info["input"].get(section,
                                                                                                          {}))]
    return out


def load_schemas(object_info: dict | None = None, version: str = MINIMUM_COMFYUI) -> dict[str, dict]:
    """Node type → normalised schema: the stored core list of ComfyUI ``version`` plus our classes, or everything
    from a live ``/object_info`` (then our nodes are checked as ComfyUI actually serves them)."""
    if object_info is not None:
        return {name: _normalise_live(info) for name, info in object_info.items()}
    core = json.loads(CORE_FILES[version].read_text())["nodes"]
    schemas = {name: _normalise_core(info) for name, info in core.items()}
    schemas.update({name: _normalise_ours(cls) for name, cls in node_classes().items()})
    return schemas


def is_widget(entry: dict) -> bool:
    kind = entry.get("type")
    return (kind in WIDGET_TYPES or isinstance(kind, list)) and not entry.get("forceInput")


def widget_layout(node_type: str, schema: dict) -> list[str | None]:
    """Names of the saved widget values in order (None marks a frontend-only extra value)."""
    names: list[str | None] = []
    for section, name in schema["order"]:
        entry = schema[section][name]
        if not is_widget(entry):
            continue
        names.append(name)
        if entry.get("control_after_generate"):
            names.append(None)  # "fixed" / "randomize"
        if (node_type, name) in UPLOAD_WIDGETS or entry.get("image_upload") or entry.get("video_upload"):
            names.append(None)  # the upload button's value
    return names


def required_widget_count(schema: dict, layout: list[str | None]) -> int:
    """How many saved widget values a node needs: up to its last required widget (with that widget's extras).

    The values after it belong to optional widgets, which a newer ComfyUI may have added at the end (0.27's
    CreateVideo ``bit_depth``): the frontend gives a widget with no saved value its default, so a workflow saved
    without them loads on both versions.
    """
    sections = {name: section for section, name in schema["order"]}
    count, owner = 0, None
    for index, name in enumerate(layout):
        owner = name if name is not None else owner  # None: an extra value of the widget before it
        if sections.get(owner) == "required":
            count = index + 1
    return count


# ---------------------------------------------------------------------------------------------- UI → API
def ui_to_api(workflow: dict, schemas: dict[str, dict], overrides: dict | None = None) -> dict:
    """ComfyUI API prompt from a UI workflow (what the frontend sends to POST /prompt).

    ``overrides``: {node title or type: {input: value}} applied to widget values (e.g. a shorter frame range).
    """
    overrides = overrides or {}
    links = {link[0]: link for link in workflow["links"]}
    nodes = {n["id"]: n for n in workflow["nodes"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in MUTED:
            continue
        schema = schemas[node["type"]]
        inputs: dict = {}
        values = list(node.get("widgets_values") or [])
        for name, value in zip(widget_layout(node["type"], schema), values):
            if name is not None:
                inputs[name] = value
        for name, value in {**overrides.get(node["type"], {}), **overrides.get(node.get("title"), {})}.items():
            inputs[name] = value
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, src, src_slot, *_ = links[slot["link"]]
                if nodes[src]["type"] in FRONTEND_ONLY or nodes[src].get("mode", 0) in MUTED:
                    continue
                inputs[slot["name"]] = [str(src), src_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title", node["type"])}}
    return prompt


def check_workflow(workflow: dict, schemas: dict[str, dict]) -> list[str]:
    """Every problem found in a UI workflow (empty list = valid)."""
    problems = []
    for key in ("last_node_id", "last_link_id", "nodes", "links", "version"):
        if key not in workflow:
            problems.append(f"missing top-level key {key!r}")
    nodes = {}
    for node in workflow.get("nodes", []):
        if node["id"] in nodes:
            problems.append(f"duplicate node id {node['id']}")
        nodes[node["id"]] = node
    if nodes and workflow.get("last_node_id", 0) < max(nodes):
        problems.append("last_node_id is below the largest node id")
    links = {}
    for link in workflow.get("links", []):
        if len(link) != 6:
            problems.append(f"link {link} is not [id, from, from_slot, to, to_slot, type]")
            continue
        links[link[0]] = link
    if links and workflow.get("last_link_id", 0) < max(links):
        problems.append("last_link_id is below the largest link id")

    for link_id, (_, src, src_slot, dst, dst_slot, kind) in links.items():
        if src not in nodes or dst not in nodes:
            problems.append(f"link {link_id} joins missing nodes")
            continue
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        if link_id not in (out.get("links") or []):
            problems.append(f"link {link_id} is not listed on output {out['name']} of node {src}")
        if inp.get("link") != link_id:
            problems.append(f"input {inp['name']} of node {dst} does not point back to link {link_id}")
        if not (out["type"] == kind == inp["type"] or inp["type"] == "*" or kind in str(inp["type"]).split(",")):
            problems.append(f"link {link_id}: {out['type']} → {inp['type']} (link says {kind})")

    for node in nodes.values():
        where = f"node {node['id']} ({node['type']})"
        if node["type"] in FRONTEND_ONLY:
            continue
        schema = schemas.get(node["type"])
        if schema is None:
            problems.append(f"{where}: unknown node type (neither EMOSH nor ComfyUI core)")
            continue
        declared = {name: schema[section][name] for section, name in schema["order"]}
        for slot in node.get("inputs", []):
            if slot["name"] not in declared:
                problems.append(f"{where}: no input named {slot['name']!r}")
            elif slot.get("link") is not None and slot["link"] not in links:
                problems.append(f"{where}: input {slot['name']} uses missing link {slot['link']}")
        for i, out in enumerate(node.get("outputs", [])):
            if i >= len(schema["output"]) or out["type"] != schema["output"][i]:
                problems.append(f"{where}: output {i} is {out['type']}, the node returns {schema['output'][i:i+1]}")
            for link_id in out.get("links") or []:
                if link_id not in links or links[link_id][1] != node["id"] or links[link_id][2] != i:
                    problems.append(f"{where}: output {out['name']} lists link {link_id} that does not start there")
        linked = {s["name"] for s in node.get("inputs", []) if s.get("link") is not None}
        for section, name in schema["order"]:
            entry = schema[section][name]
            if section == "required" and not is_widget(entry) and name not in linked:
                problems.append(f"{where}: required input {name!r} is not connected")
        layout = widget_layout(node["type"], schema)
        values = node.get("widgets_values") or []
        if not required_widget_count(schema, layout) <= len(values) <= len(layout):
            problems.append(f"{where}: {len(values)} widget values for {len(layout)} widgets")
            continue
        for name, value in zip(layout, values):
            if name is None or name in linked:
                continue
            problems += [f"{where}: {p}" for p in _check_value(name, declared[name], value)]
    return problems


def _check_value(name: str, entry: dict, value) -> list[str]:
    kind = entry["type"]
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and value != int(value)):
            return [f"{name}={value!r} is not an {kind}"]
        lo, hi = entry.get("min", -float("inf")), entry.get("max", float("inf"))
        return [] if lo <= value <= hi else [f"{name}={value} outside [{lo}, {hi}]"]
    if kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{name}={value!r} is not a boolean"]
    if kind == "STRING":
        return [] if isinstance(value, str) else [f"{name}={value!r} is not a string"]
    if kind == "COMBO":
        if not isinstance(value, str):
            return [f"{name}={value!r} is not a string"]
        options = entry.get("options") or []
        if name in FILE_COMBOS and not (name == "adapter" and value.startswith("(")):
            return []
        if options and value not in options:
            return [f"{name}={value!r} is not one of {options[:6]}..."]
    return []


# ---------------------------------------------------------------------------------------------- static tests
@pytest.fixture(scope="module")
def schemas():
    return load_schemas()


def test_the_workflows_exist_with_thumbnails_the_cpu_one_first():
    """The frontend's template cards take title and description from the file name and the thumbnail from
    <name>.jpg beside it; the numbers order them (the one that needs no model files first)."""
    assert [p.stem for p in WORKFLOWS] == [CPU_WORKFLOW.stem, "EMOSH 2 Wan 2.2 Animate (native nodes)",
                                           "EMOSH 3 Wan 2.1 VACE control",
                                           "EMOSH 4 Full pipeline (Hybrid Motion Injector)",
                                           "EMOSH 5 SCAIL2 (ComfyUI 0.27 or newer)"]
    for path in WORKFLOWS:
        assert not set("-_") & set(path.stem), "the frontend shows - and _ as spaces in the description"
        thumbnail = path.with_suffix(".jpg")
        assert thumbnail.is_file() and thumbnail.read_bytes()[:3] == b"\xff\xd8\xff", f"{thumbnail.name} is no JPEG"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_is_valid_ui_format(path):
    workflow = json.loads(path.read_text())
    assert check_workflow(workflow, load_schemas(version=required_comfyui(workflow))) == []
    notes = [n for n in workflow["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes, "each workflow explains itself in a note"
    text = " ".join(v for n in notes for v in n["widgets_values"])
    assert "Model files" in text and ("ComfyUI/models/" in text or "none" in text.lower())
    types = {n["type"] for n in workflow["nodes"]}
    assert {"EmoshTracker", "EmoshShapeSwapRetarget", "EmoshSpatialAlign", "EmoshMeshConditionRenderer"} <= types
    assert "SaveVideo" in types
    # every model file a loader names is mentioned in the note, with its folder
    for node in workflow["nodes"]:
        for value in node.get("widgets_values") or []:
            if isinstance(value, str) and value.endswith(".safetensors"):
                assert value in text, f"{value} is not explained in the note"


MODEL_LOADERS = {"UNETLoader", "VAELoader", "CLIPVisionLoader", "CLIPLoader"}
OUTPUT_NODES = {"SaveVideo", "PreviewImage"}


def outputs_without_models(workflow: dict) -> list[str]:
    """Active output nodes with no model loader upstream: ComfyUI runs every output that validates, so these would
    run (minutes of tracking) even when the model files are missing."""
    sources: dict[int, list[int]] = {}
    for _, src, _, dst, *_ in workflow["links"]:
        sources.setdefault(dst, []).append(src)
    nodes = {n["id"]: n for n in workflow["nodes"]}

    def upstream(node_id: int) -> set[int]:
        found, todo = set(), [node_id]
        while todo:
            for src in sources.get(todo.pop(), []):
                if src not in found:
                    found.add(src)
                    todo.append(src)
        return found

    return [n.get("title", n["type"]) for n in nodes.values() if n["type"] in OUTPUT_NODES
            and n.get("mode", 0) not in MUTED and not {nodes[a]["type"] for a in upstream(n["id"])} & MODEL_LOADERS]


@pytest.mark.parametrize("path", [p for p in WORKFLOWS if p != CPU_WORKFLOW], ids=lambda p: p.stem)
def test_a_missing_model_file_stops_a_gpu_workflow_before_any_work(path):
    workflow = json.loads(path.read_text())
    assert outputs_without_models(workflow) == []
    preview = next(n for n in workflow["nodes"] if n.get("title") == "Tracking overlay")
    preview["mode"] = 0
    assert outputs_without_models(workflow) == ["Tracking overlay"]


def test_validator_catches_broken_workflows(schemas):
    workflow = json.loads(CPU_WORKFLOW.read_text())
    broken = json.loads(json.dumps(workflow))
    tracker = next(n for n in broken["nodes"] if n["type"] == "EmoshTracker")
    tracker["widgets_values"][list(widget_layout("EmoshTracker", schemas["EmoshTracker"])).index("smoothing")] = 99.0
    renderer = next(n for n in broken["nodes"] if n["type"] == "EmoshMeshConditionRenderer")
    renderer["inputs"][1]["link"] = None  # the track input: now unconnected but the link still points at it
    broken["nodes"].append({"id": 99, "type": "NoSuchNode", "inputs": [], "outputs": []})
    link = next(link for link in broken["links"] if link[5] == "EHM_TRACK")
    link[5] = "IMAGE"
    save = next(n for n in broken["nodes"] if n["type"] == "SaveVideo")
    save["widgets_values"] = save["widgets_values"][:1]  # its required format/codec values are lost
    problems = "\n".join(check_workflow(broken, schemas))
    assert f"node {save['id']} (SaveVideo): 1 widget values for" in problems
    assert "smoothing=99.0 outside" in problems
    assert "does not point back" in problems and "required input 'track' is not connected" in problems
    assert "unknown node type" in problems and "(link says IMAGE)" in problems


def test_workflows_without_a_newer_optional_widget_still_validate(schemas):
    """0.27's CreateVideo has an optional ``bit_depth`` widget after ``fps``; 0.3.64's does not."""
    newer = json.loads(json.dumps(schemas))
    newer["CreateVideo"]["optional"]["bit_depth"] = {"type": "INT", "default": 8, "min": 8, "max": 10}
    newer["CreateVideo"]["order"].append(("optional", "bit_depth"))
    workflow = json.loads(CPU_WORKFLOW.read_text())
    assert check_workflow(workflow, newer) == []
    create = next(n for n in workflow["nodes"] if n["type"] == "CreateVideo")
    create["widgets_values"] = [30.0, 10]
    assert check_workflow(workflow, newer) == [] and ui_to_api(workflow, newer)[str(create["id"])]["inputs"][
        "bit_depth"] == 10
    create["widgets_values"] = [30.0, 10, 1]
    assert check_workflow(workflow, newer) == [f"node {create['id']} (CreateVideo): 3 widget values for 2 widgets"]


def test_ui_to_api_matches_the_node_signatures(schemas):
    workflow = json.loads((REPO / "workflows" / "EMOSH 2 Wan 2.2 Animate (native nodes).json").read_text())
    prompt = ui_to_api(workflow, schemas)
    assert not any(v["class_type"] in FRONTEND_ONLY for v in prompt.values())
    ksampler = next(v for v in prompt.values() if v["class_type"] == "KSampler")
    assert ksampler["inputs"]["seed"] == 0 and ksampler["inputs"]["sampler_name"] == "euler"
    assert "control_after_generate" not in ksampler["inputs"]
    animate = next(v for v in prompt.values() if v["class_type"] == "WanAnimateToVideo")
    pose_src = prompt[animate["inputs"]["pose_video"][0]]
    assert pose_src["class_type"] == "EmoshMeshConditionRenderer" and animate["inputs"]["pose_video"][1] == 1
    assert prompt[animate["inputs"]["face_video"][0]]["class_type"] == "EmoshFaceCrops"
    tracker = next(v for v in prompt.values() if v["_meta"]["title"] == "EHM Tracker (driving)")
    assert isinstance(tracker["inputs"]["fps"], list), "the driving fps comes from the video"


# ---------------------------------------------------------------------------------------------- headless run
class _CoreStandIns:
    """The few ComfyUI core nodes the CPU workflow uses, with ComfyUI's tensor conventions, for a run without it."""

    def __init__(self, input_dir: Path, output_dir: Path):
        self.input_dir, self.output_dir = input_dir, output_dir
        self.saved: list[Path] = []

    def run(self, class_type: str, inputs: dict) -> tuple:
        from emosh.video import probe_video, read_frames, read_image, write_video

        uint8_to_image = pack_nodes("common").uint8_to_image

        if class_type == "LoadImage":
            image = uint8_to_image(read_image(self.input_dir / inputs["image"]))
            return image, torch.zeros(image.shape[:3])
        if class_type == "LoadVideo":
            return (self.input_dir / inputs["file"],)
        if class_type == "GetVideoComponents":
            path = inputs["video"]
            return uint8_to_image(read_frames(path)), None, float(probe_video(path).fps)
        if class_type == "ImageFromBatch":
            start = min(inputs["batch_index"], inputs["image"].shape[0] - 1)
            return (inputs["image"][start:start + inputs["length"]],)
        if class_type == "PreviewImage":
            return ()
        if class_type == "CreateVideo":
            return ((inputs["images"], inputs["fps"]),)
        if class_type == "SaveVideo":
            images, fps = inputs["video"]
            path = self.output_dir / f"{inputs['filename_prefix']}_00001_.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_video(path, (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), fps)
            self.saved.append(path)
            return ()
        raise AssertionError(f"no stand-in for core node {class_type}")


def run_headless(prompt: dict, core: _CoreStandIns) -> dict[str, tuple]:
    """Execute an API prompt in dependency order, each node under ``torch.inference_mode()`` like ComfyUI does
    (its semantics without the cache or lazy inputs)."""
    classes = node_classes()
    results: dict[str, tuple] = {}
    pending = dict(prompt)
    while pending:
        ready = [k for k, v in pending.items()
                 if all(not isinstance(x, list) or x[0] in results for x in v["inputs"].values())]
        assert ready, f"cycle or missing node among {list(pending)}"
        for key in ready:
            node = pending.pop(key)
            inputs = {name: results[v[0]][v[1]] if isinstance(v, list) else v for name, v in node["inputs"].items()}
            cls = classes.get(node["class_type"])
            if cls is None:
                results[key] = core.run(node["class_type"], inputs)
                continue
            with torch.inference_mode():  # as ComfyUI's executor runs every node
                out = cls.execute(**inputs)
            results[key] = out.args
            assert len(results[key]) == len(cls.define_schema().outputs or []), node["class_type"]
    return results


def cpu_workflow_inputs(folder: Path, reference: Path, driving: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(reference, folder / "reference.png")
    shutil.copy(driving, folder / "driving.mp4")


@pytest.mark.slow
def test_cpu_workflow_runs_headless_and_writes_a_video(tmp_path, monkeypatch, astronaut_path, carphone_path, schemas):
    from emosh.video import probe_video, read_frames

    cpu_workflow_inputs(tmp_path / "input", astronaut_path, carphone_path)
    (tmp_path / "output").mkdir()
    monkeypatch.chdir(tmp_path)  # outside ComfyUI the nodes use ./input and ./output
    workflow = json.loads(CPU_WORKFLOW.read_text())
    prompt = ui_to_api(workflow, schemas, {"Frames to use": {"length": 6}, "EmoshSpatialAlign": {"width": 256,
                                                                                               "height": 256}})
    core = _CoreStandIns(tmp_path / "input", tmp_path / "output")
    results = run_headless(prompt, core)
    assert sorted(p.relative_to(tmp_path / "output").as_posix() for p in core.saved) == [
        "emosh/control_00001_.mp4", "emosh/preview_00001_.mp4"]
    preview = core.saved[[p.name for p in core.saved].index("preview_00001_.mp4")]
    info = probe_video(preview)
    assert info.size == (256, 256) and info.fps == pytest.approx(probe_video(carphone_path).fps, rel=1e-3)
    frames = read_frames(preview)
    assert frames.shape[0] == 6
    # the person is animated: the frames differ from each other inside the person's mask and look like the photo
    key = next(k for k, v in prompt.items() if v["class_type"] == "EmoshPreviewAnimate")
    images, mask = results[key]
    assert images.shape == (6, 256, 256, 3) and mask.shape == (6, 256, 256)
    person = mask > 0.5
    assert 0.02 < float(person.float().mean()) < 0.8
    assert float((images[1:] - images[:-1]).abs().amax(dim=-1)[person[1:] | person[:-1]].mean()) > 0.002
    align = next(k for k, v in prompt.items() if v["class_type"] == "EmoshSpatialAlign")
    reference = results[align][1][0]
    photo_colours = reference[results[align][2][0] > 0.5].mean(0)
    assert float((images[0][person[0]].mean(0) - photo_colours).abs().max()) < 0.15, "texture is from the photo"
    np.save(tmp_path / "frames.npy", frames)  # kept for debugging a failure
