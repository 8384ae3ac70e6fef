"""Where user-supplied model files are looked up, and the guard for workflow-supplied file names.

Inside ComfyUI the folders come from ``folder_paths`` (the pack registers ``emosh``); elsewhere from
``$EMOSH_MODELS_DIR`` or ``./models/emosh``. Nothing is ever downloaded.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .errors import MissingModelError, UnsafePathError


def emosh_model_dirs(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Folders searched for user model files, in priority order."""
    dirs = [Path(p) for p in extra]
    folder_paths = sys.modules.get("folder_paths")  # only present inside a running ComfyUI
    if folder_paths is not None:
        try:
            dirs += [Path(p) for p in folder_paths.get_folder_paths("emosh")]
        except (KeyError, AttributeError):
            pass
    env = os.environ.get("EMOSH_MODELS_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(Path("models") / "emosh")
    return dirs


def find_model_file(subfolder: str, names: Sequence[str], extra_dirs: Iterable[str | os.PathLike] = ()) -> Path:
    """First existing ``<dir>/<subfolder>/<name>``; otherwise an error naming every folder and file looked for."""
    dirs = emosh_model_dirs(extra_dirs)
    for d in dirs:
        for name in names:
            candidate = d / subfolder / name
            if candidate.is_file():
                return candidate
    looked = ", ".join(str(d / subfolder) for d in dirs)
    raise MissingModelError(
        f"Model file not found: expected one of {list(names)} in {looked}. "
        f"Put the file there (it is never downloaded by EMOSH)."
    )


def resolve_inside(path: str | os.PathLike, roots: Sequence[str | os.PathLike]) -> Path:
    """Resolve ``path`` (relative names are taken against the first root) and refuse anything outside ``roots``.

    Workflow JSONs come from strangers: a file name in them must not reach ``/etc/passwd`` or ``../../``.
    """
    if not roots:
        raise UnsafePathError("No allowed folders were given to resolve a file name against.")
    p = Path(path)
    if not p.is_absolute():
        p = Path(roots[0]) / p
    resolved = p.resolve()
    for root in roots:
        root_resolved = Path(root).resolve()
        if resolved == root_resolved or root_resolved in resolved.parents:
            return resolved
    raise UnsafePathError(
        f"Refusing path {str(path)!r}: it resolves to {resolved}, outside the allowed folders "
        f"{[str(r) for r in roots]}."
    )


def partial_path(path: str | os.PathLike) -> Path:
    """The hidden temporary name next to ``path`` that a file is written under before its final rename."""
    path = Path(path)
    return path.with_name(f".{path.stem}.partial{path.suffix}")


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success, delete it on any failure.

    A cancel (KeyboardInterrupt, ComfyUI interrupt) or an error therefore never leaves a half-written file under
    the real name, and an earlier result with that name survives untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
