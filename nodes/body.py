"""EHM Body Model Loader: the body model every other EMOSH node shares (socket type EHM_MODEL)."""
from __future__ import annotations

from comfy_api.latest import io

from ..emosh.body import BACKENDS, load_body_model
from .common import ROOT_CATEGORY, EhmModel, autograd

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


class EHMBodyModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EmoshBodyModelLoader",
            display_name="EHM Body Model Loader",
            category=f"{ROOT_CATEGORY}/body",
            description=("Loads the Expressive Human Model (body + hands + face) that the tracker, retargeter, "
                         "renderer and exporter share. Anny ships inside its Python package (no files to download); "
                         "SMPL-X + FLAME needs the licensed model files in ComfyUI/models/emosh/body/. The model is "
                         "cached and never modified."),
            inputs=[
                io.Combo.Input("backend", options=list(BACKENDS), default="anny",
                               tooltip="anny: Apache-2.0 model inside the anny package, 52 ARKit face actions, shape "
                                       "sliders (height, weight, age...). smplx_flame: SMPL-X body + FLAME head from "
                                       "your own licensed files in models/emosh/body/."),
                io.Combo.Input("device", options=list(DEVICES), default="auto",
                               tooltip="Where the body model runs: auto = ComfyUI's device (GPU when present), or "
                                       "force cpu/cuda."),
            ],
            outputs=[EhmModel.Output(display_name="body_model",
                                     tooltip="The body model, for the tracker, Track Edit, the renderer, Face Crops "
                                             "and Export.")],
        )

    @classmethod
    def execute(cls, backend: str, device: str) -> io.NodeOutput:
        with autograd():  # the tracker differentiates through this model's tensors
            return io.NodeOutput(load_body_model(backend, resolve_device(device)))


NODES = [EHMBodyModelLoader]
