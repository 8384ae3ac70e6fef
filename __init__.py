"""ComfyUI entry point of the EMOSH pack.

ComfyUI imports this file as a package (custom_nodes/<pack>/__init__.py). It registers the ``emosh`` model folder
(users put model files in ``ComfyUI/models/emosh/``) and exports the node mappings merged from every ``nodes/*.py``.
This file needs ComfyUI; the tests never import it (tests/pytest.ini keeps pytest's rootdir in tests/).
"""
import os

import folder_paths

MODEL_FOLDER = "emosh"


def _register_model_folder() -> None:
    """``models/emosh`` as a ComfyUI model folder (kept if the user already mapped it in extra_model_paths.yaml)."""
    path = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    if MODEL_FOLDER in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(MODEL_FOLDER, path)
    else:
        folder_paths.folder_names_and_paths[MODEL_FOLDER] = ([path], folder_paths.supported_pt_extensions)


_register_model_folder()

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402  (needs the folder registered)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
