"""The whole EMOSH pack in a real ComfyUI (skipped unless COMFYUI_PATH points at a checkout).

A ComfyUI server is started as a subprocess on a free port with a temporary base directory (the pack linked into its
custom_nodes/, a real photo and a real clip in input/). Checked: the pack imports cleanly, ``GET /object_info``
serves every node with the types our classes declare, every shipped workflow passes ComfyUI's own
``execution.validate_prompt`` (in a separate ComfyUI process, with placeholder files for the weights the GPU
workflows name), and the CPU workflow runs through the HTTP API (POST /prompt, node_errors, /history) and writes a
video. The server is run exactly as a user would start it, so everything ComfyUI does at load time is exercised.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from helpers import (comfy_base_dir, comfy_server, comfy_validate_prompts, http_get, http_post, required_comfyui,
                     version_tuple)

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
pytestmark = [pytest.mark.comfyui,
              pytest.mark.skipif(not COMFYUI_PATH, reason="set COMFYUI_PATH to a ComfyUI checkout to run these")]
REPO = Path(__file__).resolve().parents[2]
PACK_LINK = "emosh"
RUN_TIMEOUT = 900


def _load_by_path(name: str, path: Path):
    """A module loaded from its file under ``name`` (its own ``import helpers`` works because pytest puts tests/ on
    sys.path for tests/conftest.py)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tw = _load_by_path("emosh_test_workflows", REPO / "tests" / "test_workflows.py")  # the UI-format helpers


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, astronaut_path, carphone_path) -> Path:
    base = comfy_base_dir(tmp_path_factory.mktemp("comfy_base"), PACK_LINK, tw.WORKFLOWS)
    tw.cpu_workflow_inputs(base / "input", astronaut_path, carphone_path)
    return base


@pytest.fixture(scope="module")
def server(base_dir):
    """A real ComfyUI server on a free port; stopped (only this process) at the end of the module."""
    with comfy_server(COMFYUI_PATH, base_dir) as (url, log):
        yield {"url": url, "log": log, "base": base_dir}


def test_pack_loads_without_import_errors(server):
    text = server["log"].read_text()
    assert "IMPORT FAILED" not in "\n".join(line for line in text.splitlines() if PACK_LINK in line), text[-3000:]
    assert "EMOSH: could not load" not in text, text[-3000:]
    assert f"custom_nodes/{PACK_LINK}" in text  # listed in the import-times table


def test_object_info_serves_every_node_with_its_types(server):
    info = http_get(f"{server['url']}/object_info", timeout=120)
    ours = tw.node_classes()
    assert set(ours) <= set(info), sorted(set(ours) - set(info))
    for name, cls in ours.items():
        schema, served = cls.define_schema(), info[name]
        outputs = schema.outputs or []
        assert served["output"] == [o.io_type for o in outputs], name
        assert served["output_name"] == [o.display_name for o in outputs], name
        assert served["output_tooltips"] == [o.tooltip for o in outputs], name
        assert served["display_name"] == schema.display_name
        assert served["category"] == schema.category and served["description"] == schema.description
        assert served["output_node"] == schema.is_output_node
        for section in ("required", "optional"):
            declared = [item for item in schema.inputs if item.optional == (section == "optional")]
            assert served["input_order"].get(section, []) == [item.id for item in declared], f"{name} {section}"
            for item in declared:
                got = served["input"][section][item.id]
                if item.io_type == "COMBO":  # V3 serves "COMBO" with the options inside, V1 the list itself
                    assert got[0] == "COMBO" or isinstance(got[0], list), f"{name}.{item.id} is not a combo"
                else:
                    assert got[0] == item.io_type, f"{name}.{item.id}: {got[0]} != {item.io_type}"
                assert got[1].get("tooltip") == item.tooltip
    # the model folder is registered (users put EMOSH files in models/emosh/)
    assert http_get(f"{server['url']}/models/emosh") == []
    track_file = tw.load_schemas({"EmoshTrackLoad": info["EmoshTrackLoad"]})["EmoshTrackLoad"]["required"]["track_file"]
    assert track_file["options"] == [""]  # no tracks in input/ yet (V3 serves the options inside, V1 as the type)
    # the workflows are offered as the pack's templates (Workflow → Browse Templates), and served for loading
    templates = http_get(f"{server['url']}/workflow_templates")
    assert sorted(templates.get(PACK_LINK, [])) == sorted(p.stem for p in tw.WORKFLOWS)
    served = http_get(f"{server['url']}/api/workflow_templates/{PACK_LINK}/{quote(tw.CPU_WORKFLOW.name)}")
    assert served == json.loads(tw.CPU_WORKFLOW.read_text())


def test_the_comfy_api_stand_in_matches_the_real_one():
    """tests/standin/ (used without ComfyUI) offers only names and keywords that this ComfyUI's V3 API has."""
    from comfy_api import latest as real

    standin = _load_by_path("emosh_comfy_api_standin_io", tw.REPO / "tests" / "standin" / "comfy_api" / "latest" /
                            "io.py")
    public = [n for n, v in vars(standin).items() if not n.startswith("_")
              and getattr(v, "__module__", None) == standin.__name__]
    assert len(public) > 15 and hasattr(real, "ComfyExtension")
    for name in public:
        ours, theirs = getattr(standin, name), getattr(real.io, name)
        if hasattr(ours, "Input"):  # a socket type
            assert ours.io_type == theirs.io_type, name
            checks = [(ours.Input.__init__, theirs.Input.__init__), (ours.Output.__init__, theirs.Output.__init__)]
        elif not isinstance(ours, type):  # io.Custom
            checks = [(ours, theirs)]
        else:
            checks = [(ours.__init__, theirs.__init__)] if "__init__" in vars(ours) else []
        for mine, real_one in checks:
            missing = set(inspect.signature(mine).parameters) - set(inspect.signature(real_one).parameters)
            assert not missing, f"{name}: {sorted(missing)} are not keywords of ComfyUI's {name}"
    assert {f.name for f in dataclasses.fields(standin.Schema)} <= {f.name for f in dataclasses.fields(real.io.Schema)}
    assert {m.value for m in standin.NumberDisplay} <= {m.value for m in real.io.NumberDisplay}
    for method in ("define_schema", "execute", "fingerprint_inputs"):
        assert hasattr(real.io.ComfyNode, method)


def test_workflows_pass_comfyui_validate_prompt(server):
    info = http_get(f"{server['url']}/object_info", timeout=120)
    version = http_get(f"{server['url']}/system_stats")["system"]["comfyui_version"]
    schemas = tw.load_schemas(info)
    prompts = {}
    for path in tw.WORKFLOWS:
        workflow = json.loads(path.read_text())
        if version_tuple(version) < version_tuple(required_comfyui(workflow)):
            continue  # e.g. the SCAIL-2 workflow on 0.3.64, which has no WanSCAILToVideo
        assert tw.check_workflow(workflow, schemas) == [], path.name  # also against the live node list
        prompts[path.stem] = tw.ui_to_api(workflow, schemas)
    results = comfy_validate_prompts(COMFYUI_PATH, server["base"], PACK_LINK, prompts)
    for name, result in results.items():
        assert result["ok"] is True and result["node_errors"] == {}, f"{name}: {result}"
        expected = {k for k, v in prompts[name].items() if v["class_type"] == "SaveVideo"}
        assert expected <= set(result["outputs"]), name
    runnable = {p.stem for p in tw.WORKFLOWS
                if version_tuple(version) >= version_tuple(required_comfyui(json.loads(p.read_text())))}
    assert set(results) == set(prompts) == runnable


def test_cpu_workflow_runs_over_http_and_writes_a_video(server):
    from emosh.video import probe_video, read_frames

    info = http_get(f"{server['url']}/object_info", timeout=120)
    workflow = json.loads(tw.CPU_WORKFLOW.read_text())
    prompt = tw.ui_to_api(workflow, tw.load_schemas(info),
                          {"Frames to use": {"length": 6}, "EmoshSpatialAlign": {"width": 256, "height": 256}})
    status, answer = http_post(f"{server['url']}/prompt", {"prompt": prompt, "client_id": "emosh-tests"})
    assert status == 200 and answer.get("node_errors") == {}, answer
    prompt_id = answer["prompt_id"]
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        history = http_get(f"{server['url']}/history/{prompt_id}")
        entry = history.get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None and (
                entry["status"]["completed"] or entry["status"].get("status_str") == "error"):
            break
        assert time.monotonic() < deadline, f"no result after {RUN_TIMEOUT}s"
        time.sleep(2)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], default=str)[-3000:]
    saved = []
    for node_id, output in entry["outputs"].items():
        for item in output.get("images", []) + output.get("videos", []) + output.get("gifs", []):
            if item.get("filename", "").endswith(".mp4"):
                saved.append(server["base"] / "output" / item.get("subfolder", "") / item["filename"])
    names = sorted(p.name for p in saved)
    assert len(saved) == 2 and names[0].startswith("control") and names[1].startswith("preview"), names
    for path in saved:
        assert path.is_file()
        video = probe_video(path)
        assert video.size == (256, 256)
        assert read_frames(path).shape[0] == 6
    preview = read_frames(saved[[p.name for p in saved].index(names[1])])
    assert preview.std() > 10 and abs(preview[0].astype(float) - preview[-1].astype(float)).mean() > 0.5


def test_interrupt_stops_a_long_tracking_run(server):
    """POST /interrupt while the tracker works through a whole clip: the run ends as interrupted, not finished."""
    info = http_get(f"{server['url']}/object_info", timeout=120)
    workflow = json.loads(tw.CPU_WORKFLOW.read_text())
    prompt = tw.ui_to_api(workflow, tw.load_schemas(info),
                          {"Frames to use": {"length": 4096}, "EmoshSpatialAlign": {"width": 128, "height": 128},
                           "EHM Tracker (driving)": {"iterations": 2000}})  # minutes of tracking even on idle cores
    status, answer = http_post(f"{server['url']}/prompt", {"prompt": prompt, "client_id": "emosh-tests"})
    assert status == 200 and answer.get("node_errors") == {}, answer
    prompt_id = answer["prompt_id"]
    deadline = time.monotonic() + RUN_TIMEOUT
    while not http_get(f"{server['url']}/queue")["queue_running"]:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    time.sleep(10)  # well inside the trackers (a whole clip takes minutes); the body model and video load first
    http_post(f"{server['url']}/interrupt", {})
    while prompt_id not in (history := http_get(f"{server['url']}/history/{prompt_id}")):
        assert time.monotonic() < deadline, "the run neither finished nor stopped"
        time.sleep(1)
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "error"
    messages = dict((kind, data) for kind, data in entry["status"]["messages"])
    assert "execution_interrupted" in messages and "execution_success" not in messages, messages
    assert messages["execution_interrupted"]["node_type"] == "EmoshTracker", messages["execution_interrupted"]
