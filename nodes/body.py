"""EHM Body Model Loader: the body model every other EMOSH node shares (socket type EHM_MODEL)."""
from __future__ import annotations

from .common import EHM_MODEL, ROOT_CATEGORY, autograd, lib

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str) -> str:
    """``auto`` → ComfyUI's compute device (CUDA when present), else the named device."""
    if choice != "auto":
        return choice
    try:
        import comfy.model_management
        return str(comfy.model_management.get_torch_device())
    except ImportError:
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"


class EHMBodyModelLoader:
    DESCRIPTION = ("Loads the Expressive Human Model (body + hands + face) that the tracker, retargeter, renderer and "
                   "exporter share. Anny ships inside its Python package (no files to download); SMPL-X + FLAME needs "
                   "the licensed model files in ComfyUI/models/emosh/body/. The model is cached and never modified.")
    CATEGORY = f"{ROOT_CATEGORY}/body"
    FUNCTION = "load"
    RETURN_TYPES = (EHM_MODEL,)
    RETURN_NAMES = ("body_model",)
    OUTPUT_TOOLTIPS = ("The body model, for the tracker, Track Edit, the renderer, Face Crops and Export.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "backend": (list(lib("body").BACKENDS), {
                "default": "anny",
                "tooltip": "anny: Apache-2.0 model inside the anny package, 52 ARKit face actions, shape sliders "
                           "(height, weight, age...). smplx_flame: SMPL-X body + FLAME head from your own licensed "
                           "files in models/emosh/body/."}),
            "device": (list(DEVICES), {
                "default": "auto",
                "tooltip": "Where the body model runs: auto = ComfyUI's device (GPU when present), or force "
                           "cpu/cuda."}),
        }}

    def load(self, backend: str, device: str):
        with autograd():  # the tracker differentiates through this model's tensors
            return (lib("body").load_body_model(backend, resolve_device(device)),)


NODE_CLASS_MAPPINGS = {"EmoshBodyModelLoader": EHMBodyModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"EmoshBodyModelLoader": "EHM Body Model Loader"}
