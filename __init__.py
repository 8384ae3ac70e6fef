"""ComfyUI entry point of the EMOSH pack (V3: ``comfy_entrypoint`` returns a ``ComfyExtension``).

ComfyUI imports this file as a package (custom_nodes/<pack>/__init__.py) and calls :func:`comfy_entrypoint`, which
registers the ``emosh`` model folder (users put model files in ``ComfyUI/models/emosh/``) and hands over the node
classes of every ``nodes/*.py``. Needs ComfyUI 0.3.64 or newer.
"""
from __future__ import annotations

import os

from comfy_api.latest import ComfyExtension, io

from .nodes import NODES

MODEL_FOLDER = "emosh"


def _register_model_folder() -> None:
    """``models/emosh`` as a ComfyUI model folder (kept if the user already mapped it in extra_model_paths.yaml)."""
    import folder_paths

    path = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    if MODEL_FOLDER in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(MODEL_FOLDER, path)
    else:
        folder_paths.folder_names_and_paths[MODEL_FOLDER] = ([path], folder_paths.supported_pt_extensions)


class EmoshExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> EmoshExtension:
    """Called once by ComfyUI at start-up (0.3.64 never calls ``on_load``, so the folder is registered here)."""
    _register_model_folder()
    return EmoshExtension()
