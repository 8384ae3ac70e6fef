"""The shipped workflows in ComfyUI's real web frontend, in headless Chromium (skipped unless COMFYUI_PATH is set,
and with its reason when chromium or playwright-core is missing: see docs/comfyui-testing.md).

A ComfyUI server is started over a temporary base directory (the pack linked in, the CPU workflow's inputs and a
portrait clip in input/, placeholder model files). ``frontend_probe.mjs`` opens the frontend, loads each workflow as
the template browser does, and reports the frontend's own node geometry and widgets at three stages: loaded, after
a portrait video is chosen in Load Video, and after every Save Video and Preview Image shows a portrait clip or image (as after a run). Checked: no
missing-node dialog or error overlay, no node drawn over another, every widget value inside its range, and the
prompt the frontend builds passes ComfyUI's validate_prompt. Screenshots land in ``EMOSH_SCREENSHOTS`` (default: the
test's temp dir).
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from helpers import comfy_base_dir, comfy_server, comfy_validate_prompts, http_get, required_comfyui, version_tuple

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
PACK_LINK = "emosh"
PORTRAIT = "portrait.mp4"
PORTRAIT_IMAGE = "portrait.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PLAYWRIGHT = HERE / "node_modules" / "playwright-core"
PROBE_TIMEOUT = 600
GAP = 0  # nodes may touch, never overlap (frontend canvas units)

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(not COMFYUI_PATH, reason="set COMFYUI_PATH to a ComfyUI checkout to run these"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)"),
    pytest.mark.skipif(shutil.which("node") is None or not PLAYWRIGHT.is_dir(),
                       reason="playwright-core is not installed (cd tests/comfyui && npm install)"),
]


def write_portrait_media(source: Path, video_path: Path, image_path: Path, frames: int = 24) -> None:
    """A 9:16 clip cut from the middle of a landscape one (what a phone gives), and its first frame as an image."""
    from emosh.video import read_frames, write_image, write_video

    video = read_frames(source, max_frames=frames)
    height, width = video.shape[1:3]
    crop = (height * 9 // 16) // 2 * 2
    left = (width - crop) // 2
    portrait = np.ascontiguousarray(video[:, :, left:left + crop])
    write_video(video_path, portrait, 25.0)
    write_image(image_path, portrait[0])


@pytest.fixture(scope="module")
def frontend(tmp_path_factory, astronaut_path, carphone_path) -> Iterator[dict]:
    """The probe's report for every workflow, with the server (kept running for the module) and its base dir."""
    base = comfy_base_dir(tmp_path_factory.mktemp("comfy_base"), PACK_LINK, WORKFLOWS)
    (base / "input").mkdir()
    shutil.copy(astronaut_path, base / "input" / "reference.png")
    shutil.copy(carphone_path, base / "input" / "driving.mp4")
    write_portrait_media(carphone_path, base / "input" / PORTRAIT, base / "input" / PORTRAIT_IMAGE)
    shots = Path(os.environ.get("EMOSH_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    with comfy_server(COMFYUI_PATH, base) as (url, _log):
        templates = http_get(f"{url}/workflow_templates")[PACK_LINK]
        version = version_tuple(http_get(f"{url}/system_stats")["system"]["comfyui_version"])
        runnable = [p.stem for p in WORKFLOWS if version >= version_tuple(required_comfyui(json.loads(p.read_text())))]
        done = subprocess.run(["node", str(HERE / "frontend_probe.mjs"), url, CHROMIUM,
                               str(tmp_path_factory.mktemp("chromium_profile")), str(shots), PORTRAIT, PORTRAIT_IMAGE,
                               *runnable],
                              cwd=HERE, capture_output=True, text=True, timeout=PROBE_TIMEOUT)
        assert done.returncode == 0, f"probe failed:\n{done.stderr[-4000:]}"
        (shots / "report.json").write_text(done.stdout.strip().splitlines()[-1])  # node boxes, for laying out
        report = json.loads(done.stdout.strip().splitlines()[-1])
        yield {"results": {r["name"]: r for r in report["results"]}, "page_errors": report["pageErrors"],
               "base": base, "url": url, "templates": templates}


def result_of(frontend: dict, path: Path) -> dict:
    """The probe's report on ``path``; skipped when this ComfyUI is older than the workflow needs."""
    if path.stem not in frontend["results"]:
        pytest.skip(f"{path.name} needs ComfyUI {required_comfyui(json.loads(path.read_text()))} or newer")
    return frontend["results"][path.stem]


def overlaps(nodes: list[dict]) -> list[str]:
    """Every pair of nodes whose drawn boxes (title bar included) intersect."""
    found = []
    for a, b in itertools.combinations([n for n in nodes if not n["collapsed"]], 2):
        (ax, ay, aw, ah), (bx, by, bw, bh) = a["box"], b["box"]
        if ax + aw > bx + GAP and bx + bw > ax + GAP and ay + ah > by + GAP and by + bh > ay + GAP:
            found.append(f"{a['title']!r} ({a['id']}) and {b['title']!r} ({b['id']})")
    return found


def out_of_range(nodes: list[dict]) -> list[str]:
    """Every widget whose value lies outside its min/max or is not one of its combo options."""
    found = []
    for node in nodes:
        for w in node["widgets"]:
            where = f"{node['title']!r}.{w['name']}={w['value']!r}"
            if isinstance(w["value"], (int, float)) and not isinstance(w["value"], bool):
                if (w["min"] is not None and w["value"] < w["min"]) or (w["max"] is not None and w["value"] > w["max"]):
                    found.append(f"{where} outside [{w['min']}, {w['max']}]")
            elif w["values"] is not None and w["value"] not in w["values"]:
                found.append(f"{where} is not one of {w['values'][:5]}")
    return found


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_loads_without_missing_nodes_or_errors(frontend, path):
    result = result_of(frontend, path)
    assert "error" not in result, result.get("error")
    for stage in result["stages"]:
        assert stage["overlays"] == [], f"{stage['stage']}: on screen: {stage['overlays']}"
        unknown = [n["type"] for n in stage["nodes"] if not n["registered"]]
        assert unknown == [], f"{stage['stage']}: node types the frontend does not know: {unknown}"
        assert not any(n["has_errors"] for n in stage["nodes"]), stage["stage"]
    assert len(result["stages"][0]["nodes"]) == len(json.loads(path.read_text())["nodes"])


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_no_node_is_drawn_over_another(frontend, path):
    for stage in result_of(frontend, path)["stages"]:
        assert overlaps(stage["nodes"]) == [], f"{path.name}, {stage['stage']}"
    assert result_of(frontend, path)["stages"][1]["videos"] >= 1, "the portrait clip was chosen somewhere"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_widget_value_is_inside_its_range(frontend, path):
    stage = result_of(frontend, path)["stages"][0]
    assert sum(len(n["widgets"]) for n in stage["nodes"]) > 20
    assert out_of_range(stage["nodes"]) == []


def test_the_prompts_the_frontend_builds_pass_validate_prompt(frontend):
    prompts = {name: result["prompt"] for name, result in frontend["results"].items()}
    results = comfy_validate_prompts(COMFYUI_PATH, frontend["base"], PACK_LINK, prompts)
    for name, result in results.items():
        assert result["ok"] is True and result["node_errors"] == {}, f"{name}: {result}"
        saves = {k for k, v in prompts[name].items() if v["class_type"] == "SaveVideo"}
        assert saves and saves <= set(result["outputs"]), name
    # the frontend's own code must not fail on loading a workflow or choosing a video; errors before any workflow
    # (1.27.10 throws one at start-up) or on the after-run stage's stand-in "executed" event are not ours
    ours = [e for e in frontend["page_errors"] if not e.startswith("start-up") and "after run" not in e]
    assert ours == []


def test_the_checks_catch_a_broken_layout():
    """The overlap and range checks fail on what the frontend would report for a broken graph."""
    node = {"id": 1, "title": "a", "collapsed": False, "box": [0, 0, 100, 100],
            "widgets": [{"name": "steps", "value": 0, "min": 1, "max": 10, "values": None},
                        {"name": "mode", "value": "x", "min": None, "max": None, "values": ["y"]}]}
    other = {**node, "id": 2, "title": "b", "box": [99, 50, 100, 100], "widgets": []}
    assert overlaps([node, other]) == ["'a' (1) and 'b' (2)"]
    assert overlaps([node, {**other, "box": [100, 0, 50, 50]}]) == []  # touching is fine
    assert out_of_range([node]) == ["'a'.steps=0 outside [1, 10]", "'a'.mode='x' is not one of ['y']"]


def test_every_template_thumbnail_is_served(frontend):
    """The template browser asks for /api/workflow_templates/emosh/<name>.jpg for each card."""
    assert sorted(frontend["templates"]) == [p.stem for p in WORKFLOWS]
    for name in frontend["templates"]:
        with urllib.request.urlopen(f"{frontend['url']}/api/workflow_templates/{PACK_LINK}/{quote(name)}.jpg") as r:
            assert r.headers["Content-Type"] == "image/jpeg" and r.read()[:3] == b"\xff\xd8\xff", name
