"""Error types shared by the library, the CLI and the ComfyUI nodes.

Every error says what was wrong and how to fix it; the nodes surface the message unchanged.
"""


class EmoshError(Exception):
    """Base class: anything the user can act on."""


class InputError(EmoshError, ValueError):
    """An input (image, video, tensor, option) is unusable."""


class NoPersonError(InputError):
    """No person was detected in any frame."""


class TrackFormatError(EmoshError, ValueError):
    """A track file or object has wrong fields, shapes, dtypes or values."""


class MissingModelError(EmoshError, FileNotFoundError):
    """A user-supplied model file is not where it is looked for."""


class UnsafePathError(EmoshError, PermissionError):
    """A path from a workflow points outside the allowed folders, or a file needs unsafe loading."""
