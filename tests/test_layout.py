"""The package layout reads downhill: the import graph of ``emosh/`` (every import statement, at module level or
inside a function, parsed with ``ast``) only points from features down to what they build on.

    foundations: emosh.body (body models, EHMTrack, camera, joint groups, landmark table, z-buffer, shading) and
                 the root helpers (errors, paths, safeio, temporal, video, keypoints, mediapipe_import)
    stages:      emosh.track, emosh.render (independent of each other), emosh.generate
    features:    edit, retarget, align, export, facecrop, animate, train, commands, bench; emosh.cli dispatches
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "emosh"
FOUNDATION_MODULES = {"emosh.errors", "emosh.paths", "emosh.safeio", "emosh.temporal", "emosh.video",
                      "emosh.keypoints", "emosh.mediapipe_import"}
FOUNDATIONS = FOUNDATION_MODULES | {"emosh.body"}
STAGES = {"emosh.track", "emosh.render", "emosh.generate"}


def module_names(package: Path) -> dict[str, Path]:
    """Dotted name → file of every module under ``package`` (a package is named by its ``__init__.py``)."""
    names = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_edges(package: Path) -> list[tuple[str, str, str]]:
    """(importing module, imported module, imported name or "") for every import of an ``emosh`` module."""
    modules = module_names(package)
    edges = []
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges += [(name, alias.name, "") for alias in node.names if alias.name.split(".")[0] == "emosh"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[:len(here.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "emosh":
                    continue
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    edges.append((name, submodule, "") if submodule in modules else (name, target, alias.name))
    return edges


def unit(module: str) -> str:
    """The layer unit of a module: its top package under emosh (emosh.body, emosh.track, ...) or the root module."""
    return ".".join(module.split(".")[:2])


def test_the_edge_finder_sees_relative_and_function_level_imports():
    edges = import_edges(PACKAGE)
    assert ("emosh.render.renderer", "emosh.body.landmarks", "mesh_landmarks") in edges  # from ..body.landmarks
    assert ("emosh.render.renderer", "emosh.render.draw", "") in edges  # from . import draw
    assert ("emosh.retarget", "emosh.align", "spatial_align") in edges  # inside the CLI function
    assert {unit(m) for m in module_names(PACKAGE)} >= FOUNDATIONS | STAGES


def test_foundations_import_only_foundations():
    upward = sorted({(a, b) for a, b, _ in import_edges(PACKAGE)
                     if unit(a) in FOUNDATIONS and unit(b) not in FOUNDATIONS})
    assert not upward, f"foundation modules import features or stages: {upward}"


def test_track_and_render_are_independent_and_import_no_feature():
    wrong = sorted({(a, b) for a, b, _ in import_edges(PACKAGE)
                    if unit(a) in ("emosh.track", "emosh.render") and unit(b) != unit(a) and unit(b) not in FOUNDATIONS})
    assert not wrong, f"track/render import each other or a feature module: {wrong}"


def test_generate_imports_no_feature():
    wrong = sorted({(a, b) for a, b, _ in import_edges(PACKAGE)
                    if unit(a) == "emosh.generate" and unit(b) not in FOUNDATIONS | STAGES})
    assert not wrong, f"generate imports feature modules: {wrong}"


def test_no_private_name_is_imported_across_packages():
    private = sorted((a, f"{b}.{n}") for a, b, n in import_edges(PACKAGE) if n.startswith("_") and unit(a) != unit(b))
    assert not private, f"private names imported from another package (make them public, lower down): {private}"


def test_the_dispatcher_is_imported_by_nothing_but_main():
    users = sorted({a for a, b, _ in import_edges(PACKAGE) if b == "emosh.cli" and a != "emosh.__main__"})
    assert not users, f"command modules import the dispatcher (commands return their summary instead): {users}"
