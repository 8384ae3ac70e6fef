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
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
pytestmark = [pytest.mark.comfyui,
              pytest.mark.skipif(not COMFYUI_PATH, reason="set COMFYUI_PATH to a ComfyUI checkout to run these")]
REPO = Path(__file__).resolve().parents[2]
PACK_LINK = "emosh"
START_TIMEOUT = 240
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 30) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
            return response.status, json.loads(body) if body.strip() else {}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _weights_named_by_workflows() -> dict[str, set[str]]:
    """Model folder → file names the GPU workflows select (placeholders make their combos valid)."""
    folders = {"UNETLoader": "diffusion_models", "VAELoader": "vae", "CLIPVisionLoader": "clip_vision",
               "CLIPLoader": "text_encoders"}
    wanted: dict[str, set[str]] = {}
    for path in tw.WORKFLOWS:
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"] in folders:
                wanted.setdefault(folders[node["type"]], set()).add(node["widgets_values"][0])
    return wanted


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, astronaut_path, carphone_path) -> Path:
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_LINK).symlink_to(REPO, target_is_directory=True)
    tw.cpu_workflow_inputs(base / "input", astronaut_path, carphone_path)
    for folder, names in _weights_named_by_workflows().items():
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (base / "models" / folder / name).write_bytes(b"placeholder: validation only, never executed")
    return base


@pytest.fixture(scope="module")
def server(base_dir):
    """A real ComfyUI server on a free port; stopped (only this process) at the end of the module."""
    port = _free_port()
    log = base_dir / "comfyui.log"
    command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--disable-auto-launch", "--base-directory", str(base_dir), "--database-url", "sqlite:///:memory:"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=COMFYUI_PATH, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            pytest.fail(f"ComfyUI exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            _get(f"{url}/system_stats", timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                process.terminate()
                pytest.fail(f"ComfyUI did not answer within {START_TIMEOUT}s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
    yield {"url": url, "log": log, "base": base_dir}
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def test_pack_loads_without_import_errors(server):
    text = server["log"].read_text()
    assert "IMPORT FAILED" not in "\n".join(line for line in text.splitlines() if PACK_LINK in line), text[-3000:]
    assert "EMOSH: could not load" not in text, text[-3000:]
    assert f"custom_nodes/{PACK_LINK}" in text  # listed in the import-times table


def test_object_info_serves_every_node_with_its_types(server):
    info = _get(f"{server['url']}/object_info", timeout=120)
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
    assert _get(f"{server['url']}/models/emosh") == []
    track_file = tw.load_schemas({"EmoshTrackLoad": info["EmoshTrackLoad"]})["EmoshTrackLoad"]["required"]["track_file"]
    assert track_file["options"] == [""]  # no tracks in input/ yet (V3 serves the options inside, V1 as the type)
    # the workflows are offered as the pack's templates (Workflow → Browse Templates), and served for loading
    templates = _get(f"{server['url']}/workflow_templates")
    assert sorted(templates.get(PACK_LINK, [])) == sorted(p.stem for p in tw.WORKFLOWS)
    served = _get(f"{server['url']}/api/workflow_templates/{PACK_LINK}/emosh_preview_cpu.json")
    assert served == json.loads((REPO / "workflows" / "emosh_preview_cpu.json").read_text())


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


VALIDATE_SCRIPT = r"""
import asyncio, json, sys
comfy_path, base, prompts_file = sys.argv[1:4]
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
assert asyncio.run(nodes.load_custom_node(base + "/custom_nodes/emosh", set(nodes.NODE_CLASS_MAPPINGS)))
results = {}
for name, prompt in json.load(open(prompts_file)).items():
    ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt(name, prompt, None))
    results[name] = {"ok": ok, "error": error, "outputs": sorted(outputs), "node_errors": node_errors}
print("RESULT " + json.dumps(results, default=str))
"""


def test_workflows_pass_comfyui_validate_prompt(server):
    info = _get(f"{server['url']}/object_info", timeout=120)
    version = _get(f"{server['url']}/system_stats")["system"]["comfyui_version"]
    schemas = tw.load_schemas(info)
    prompts = {}
    for path in tw.WORKFLOWS:
        workflow = json.loads(path.read_text())
        if tw.version_tuple(version) < tw.version_tuple(tw.required_comfyui(workflow)):
            continue  # e.g. the SCAIL-2 workflow on 0.3.64, which has no WanSCAILToVideo
        assert tw.check_workflow(workflow, schemas) == [], path.name  # also against the live node list
        prompts[path.stem] = tw.ui_to_api(workflow, schemas)
    prompts_file = server["base"] / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    done = subprocess.run([sys.executable, "-c", VALIDATE_SCRIPT, COMFYUI_PATH, str(server["base"]),
                           str(prompts_file)], cwd=COMFYUI_PATH, capture_output=True, text=True, timeout=600)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, f"validation process failed ({done.returncode}):\n{done.stderr[-4000:]}"
    results = json.loads(line[len("RESULT "):])
    for name, result in results.items():
        assert result["ok"] is True and result["node_errors"] == {}, f"{name}: {result}"
        expected = {k for k, v in prompts[name].items() if v["class_type"] == "SaveVideo"}
        assert expected <= set(result["outputs"]), name
    assert set(results) == set(prompts) and ("emosh_scail2" in results) == (tw.version_tuple(version) >= (0, 27))


def test_cpu_workflow_runs_over_http_and_writes_a_video(server):
    from emosh.video import probe_video, read_frames

    info = _get(f"{server['url']}/object_info", timeout=120)
    workflow = json.loads((REPO / "workflows" / "emosh_preview_cpu.json").read_text())
    prompt = tw.ui_to_api(workflow, tw.load_schemas(info),
                          {"Frames to use": {"length": 6}, "EmoshSpatialAlign": {"width": 256, "height": 256}})
    status, answer = _post(f"{server['url']}/prompt", {"prompt": prompt, "client_id": "emosh-tests"})
    assert status == 200 and answer.get("node_errors") == {}, answer
    prompt_id = answer["prompt_id"]
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        history = _get(f"{server['url']}/history/{prompt_id}")
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
    info = _get(f"{server['url']}/object_info", timeout=120)
    workflow = json.loads((REPO / "workflows" / "emosh_preview_cpu.json").read_text())
    prompt = tw.ui_to_api(workflow, tw.load_schemas(info),
                          {"Frames to use": {"length": 4096}, "EmoshSpatialAlign": {"width": 128, "height": 128},
                           "EHM Tracker (driving)": {"iterations": 2000}})  # minutes of tracking even on idle cores
    status, answer = _post(f"{server['url']}/prompt", {"prompt": prompt, "client_id": "emosh-tests"})
    assert status == 200 and answer.get("node_errors") == {}, answer
    prompt_id = answer["prompt_id"]
    deadline = time.monotonic() + RUN_TIMEOUT
    while not _get(f"{server['url']}/queue")["queue_running"]:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    time.sleep(10)  # well inside the trackers (a whole clip takes minutes); the body model and video load first
    _post(f"{server['url']}/interrupt", {})
    while prompt_id not in (history := _get(f"{server['url']}/history/{prompt_id}")):
        assert time.monotonic() < deadline, "the run neither finished nor stopped"
        time.sleep(1)
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "error"
    messages = dict((kind, data) for kind, data in entry["status"]["messages"])
    assert "execution_interrupted" in messages and "execution_success" not in messages, messages
    assert messages["execution_interrupted"]["node_type"] == "EmoshTracker", messages["execution_interrupted"]
