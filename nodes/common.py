"""Shared glue for the EMOSH ComfyUI nodes: socket types, tensor conventions, progress/cancel, safe file names.

The nodes are ComfyUI V3 nodes (``comfy_api.latest``); other ComfyUI modules (``comfy.*``, ``folder_paths``) are
imported inside the functions that need them. The library is the pack's sibling package, reached by relative imports.
"""
from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from comfy_api.latest import io

from ..emosh.errors import InputError
from ..emosh.paths import resolve_inside

EHM_MODEL = "EHM_MODEL"  # socket type of a loaded body model (emosh.body.BodyModel)
EHM_TRACK = "EHM_TRACK"  # socket type of a tracked person (emosh.body.EHMTrack)
EhmModel = io.Custom(EHM_MODEL)
EhmTrack = io.Custom(EHM_TRACK)
ROOT_CATEGORY = "EMOSH"


# ---------------------------------------------------------------------------------------------- tensor conventions
def image_to_uint8(images: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE ``[B, H, W, C]`` float 0..1 → RGB uint8 ``[B, H, W, 3]`` (alpha dropped, gray replicated)."""
    check_image(images)
    rgb = images[..., :3] if images.shape[-1] >= 3 else images[..., :1].expand(*images.shape[:-1], 3)
    return (rgb.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()


def uint8_to_image(frames: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """RGB uint8 ``[B, H, W, 3]`` (or a list of ``[H, W, 3]``) → ComfyUI IMAGE float32 0..1 on the CPU."""
    array = np.stack(frames) if isinstance(frames, (list, tuple)) else np.asarray(frames)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise InputError(f"Expected RGB frames [B, H, W, 3], got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)


def as_image(frames: torch.Tensor) -> torch.Tensor:
    """A library frame batch ``[B, H, W, 3]`` (uint8 0..255 or float 0..1, any device) → ComfyUI IMAGE on the CPU."""
    frames = frames.detach().cpu()
    if frames.dtype == torch.uint8:
        return frames.float().div_(255.0)
    return frames.float().clamp(0, 1)


def check_image(images: torch.Tensor, name: str = "image") -> None:
    """Refuse anything that is not an IMAGE batch, with a message instead of a shape error deep inside."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] not in (1, 3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"{name} must be a ComfyUI IMAGE [batch, height, width, channels], got {shape}")
    if images.shape[0] < 1:
        raise InputError(f"{name} is an empty image batch")
    if images.dtype.is_floating_point and not torch.isfinite(images).all():
        raise InputError(f"{name} contains NaN or Inf values; check the node that produced it")


def mask_to_float(mask: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """A ComfyUI MASK ``[B, H, W]`` (or ``[H, W]``) at any size → ``[frames, height, width]`` float 0..1.

    A single mask is repeated over the frames; a mask of another size is resized (bilinear), because masks drawn in
    the mask editor often come from a differently sized image.
    """
    m = mask.detach().float()
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3:
        raise InputError(f"mask must be a ComfyUI MASK [batch, height, width], got {tuple(mask.shape)}")
    if m.shape[0] not in (1, frames):
        raise InputError(f"mask has {m.shape[0]} frames but the images have {frames}; give one mask "
                                       f"or one per frame")
    if m.shape[1:] != (height, width):
        m = torch.nn.functional.interpolate(m[:, None], size=(height, width), mode="bilinear",
                                            align_corners=False)[:, 0]
    return m.expand(frames, height, width).clamp(0, 1).cpu()


def mask_from_float(mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Anything ``[B, H, W]`` or ``[B, H, W, 1]`` (bool, uint8 0..255 or float 0..1) → ComfyUI MASK float32
    ``[B, H, W]`` on the CPU."""
    m = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask).detach().cpu()
    if m.dim() == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.dtype == torch.uint8:
        m = m.float() / 255.0
    return m.float().clamp(0, 1)


@contextlib.contextmanager
def autograd() -> Iterator[None]:
    """Gradients on, inside ComfyUI's ``torch.inference_mode()`` execution: for the tracker's optimiser, and for
    building the cached body model so its tensors are normal ones that autograd may save (inference tensors cannot
    take part in a backward pass)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


# ---------------------------------------------------------------------------------------------- progress and cancel
class Progress:
    """A ComfyUI progress bar plus the interrupt check, in the callback shapes the library takes.

    ``progress(done, total)`` updates the bar (ComfyUI's hook also raises on /interrupt there); ``cancel()`` raises
    ComfyUI's InterruptProcessingException after the user pressed Cancel and returns False otherwise, so it also
    works where the library expects a "should I stop?" predicate. Outside ComfyUI both are no-ops.
    """

    def __init__(self, total: int):
        self._bar = None
        self._interrupted: Callable[[], None] | None = None
        try:
            import comfy.model_management
            import comfy.utils
        except ImportError:
            return
        self._bar = comfy.utils.ProgressBar(max(int(total), 1))
        self._interrupted = comfy.model_management.throw_exception_if_processing_interrupted

    def progress(self, done: int, total: int | None = None) -> None:
        if self._bar is not None:
            self._bar.update_absolute(int(done), None if total is None else max(int(total), 1))

    def cancel(self) -> bool:
        if self._interrupted is not None:
            self._interrupted()
        return False


# ---------------------------------------------------------------------------------------------- files
def comfy_folder(kind: str) -> Path:
    """ComfyUI's ``input`` or ``output`` folder (or ./input, ./output when run outside ComfyUI)."""
    try:
        import folder_paths
    except ImportError:
        return Path(kind).resolve()
    getter = {"input": folder_paths.get_input_directory, "output": folder_paths.get_output_directory}[kind]
    return Path(getter())


def safe_path(name: str, kind: str) -> Path:
    """A workflow-supplied file name resolved inside ComfyUI's ``kind`` folder; anything outside is refused."""
    if not name or not str(name).strip():
        raise InputError(f"Empty file name (expected a name inside the ComfyUI {kind} folder)")
    return resolve_inside(str(name).strip(), [comfy_folder(kind)])


def output_stem(filename_prefix: str) -> Path:
    """A fresh ``<output>/<prefix>_00001`` (ComfyUI-style counter): no file or folder starts with it yet.

    One counter for all the files of one save (e.g. ``.bvh`` and ``.glb``, or a folder of ``.ply``). Subfolders in
    the prefix are kept, but the result never leaves the output folder.
    """
    base = safe_path(filename_prefix, "output")
    if base == comfy_folder("output").resolve():
        raise InputError("filename_prefix must name a file, not the output folder itself")
    base.parent.mkdir(parents=True, exist_ok=True)
    taken = {p.name.split(".", 1)[0] for p in base.parent.glob(f"{glob.escape(base.name)}_*")}
    counter = 1
    while f"{base.name}_{counter:05d}" in taken:
        counter += 1
    return base.parent / f"{base.name}_{counter:05d}"


def list_input_files(suffixes: tuple[str, ...]) -> list[str]:
    """Names (relative, '/'-separated) of the files under ComfyUI's input folder with one of ``suffixes``."""
    root = comfy_folder("input")
    if not root.is_dir():
        return []
    names = []
    for dirpath, _dirs, files in os.walk(root):
        for file in files:
            if file.lower().endswith(suffixes):
                names.append((Path(dirpath) / file).relative_to(root).as_posix())
    return sorted(names)


def relative_to_output(path: Path) -> dict[str, str]:
    """The ``{filename, subfolder, type}`` record ComfyUI's UI uses to show a saved file."""
    rel = Path(path).resolve().relative_to(comfy_folder("output").resolve())
    return {"filename": rel.name, "subfolder": rel.parent.as_posix() if str(rel.parent) != "." else "",
            "type": "output"}
