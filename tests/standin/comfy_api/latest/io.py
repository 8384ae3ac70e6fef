"""Stand-in for ``comfy_api.latest.io``: node base class, schema, socket types and node output.

It records what a node declares; it validates nothing beyond Python's own keyword checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class _Input:
    io_type: str = ""

    def __init__(self, id: str, display_name: str = None, optional: bool = False, tooltip: str = None,
                 lazy: bool = None):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy


class _WidgetInput(_Input):
    def __init__(self, id: str, display_name: str = None, optional: bool = False, tooltip: str = None,
                 lazy: bool = None, default: Any = None, socketless: bool = None, force_input: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy)
        self.default, self.socketless, self.force_input = default, socketless, force_input


class _Output:
    io_type: str = ""

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list: bool = False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


def _socket_type(io_type: str, input_base: type = _Input) -> type:
    """A socket type class with ``Input`` / ``Output`` classes that carry ``io_type``."""
    return type(io_type, (), {"io_type": io_type,
                              "Input": type("Input", (input_base,), {"io_type": io_type}),
                              "Output": type("Output", (_Output,), {"io_type": io_type})})


def Custom(io_type: str) -> type:  # noqa: N802 (ComfyUI's name)
    """A socket type of the pack's own (e.g. ``EHM_TRACK``)."""
    return _socket_type(io_type)


class _BooleanInput(_WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional: bool = False, tooltip: str = None,
                 lazy: bool = None, default: bool = None, label_on: str = None, label_off: str = None,
                 socketless: bool = None, force_input: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, force_input)
        self.label_on, self.label_off = label_on, label_off


class _IntInput(_WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional: bool = False, tooltip: str = None,
                 lazy: bool = None, default: int = None, min: int = None, max: int = None, step: int = None,
                 control_after_generate: bool = None, display_mode: NumberDisplay = None, socketless: bool = None,
                 force_input: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, force_input)
        self.min, self.max, self.step = min, max, step
        self.control_after_generate, self.display_mode = control_after_generate, display_mode


class _FloatInput(_WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional: bool = False, tooltip: str = None,
                 lazy: bool = None, default: float = None, min: float = None, max: float = None, step: float = None,
                 round: float = None, display_mode: NumberDisplay = None, socketless: bool = None,
                 force_input: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, force_input)
        self.min, self.max, self.step, self.round, self.display_mode = min, max, step, round, display_mode


class _StringInput(_WidgetInput):
    def __init__(self, id: str, display_name: str = None, optional: bool = False, tooltip: str = None,
                 lazy: bool = None, multiline: bool = False, placeholder: str = None, default: str = None,
                 dynamic_prompts: bool = None, socketless: bool = None, force_input: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, force_input)
        self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts


class _ComboInput(_WidgetInput):
    def __init__(self, id: str, options: list[str] = None, display_name: str = None, optional: bool = False,
                 tooltip: str = None, lazy: bool = None, default: str = None, control_after_generate: bool = None,
                 socketless: bool = None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
        self.options, self.control_after_generate = options, control_after_generate


Boolean = _socket_type("BOOLEAN", _BooleanInput)
Int = _socket_type("INT", _IntInput)
Float = _socket_type("FLOAT", _FloatInput)
String = _socket_type("STRING", _StringInput)
Combo = _socket_type("COMBO", _ComboInput)
Image = _socket_type("IMAGE")
Mask = _socket_type("MASK")
Latent = _socket_type("LATENT")
Conditioning = _socket_type("CONDITIONING")
Model = _socket_type("MODEL")
Vae = _socket_type("VAE")
ClipVisionOutput = _socket_type("CLIP_VISION_OUTPUT")
Sampler = _socket_type("SAMPLER")
Sigmas = _socket_type("SIGMAS")


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    description: str = ""
    is_output_node: bool = False
    not_idempotent: bool = False


class NodeOutput:
    def __init__(self, *args: Any, ui: dict = None):
        self.args, self.ui = args, ui

    @property
    def result(self):
        return self.args if self.args else None

    def __getitem__(self, index: int) -> Any:
        return self.args[index]


class ComfyNode:
    """Base of a V3 node: ``define_schema`` and ``execute`` are class methods, as in ComfyUI."""

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> Any:
        raise NotImplementedError
