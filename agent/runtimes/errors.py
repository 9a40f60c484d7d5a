"""Exceptions raised by the model runtime adapters.

Every error an ML runtime can throw is translated at this boundary into one of
these classes, with a one-line message a technician understands; the original
exception stays attached as ``__cause__``.
"""

from __future__ import annotations


class ModelRuntimeError(Exception):
    """Base class of every runtime adapter error."""


class RuntimeUnavailableError(ModelRuntimeError):
    """The runtime is unknown, or its package is not installed or not usable here."""


class UnsupportedModelError(ModelRuntimeError):
    """The model file is of a kind no runtime adapter handles."""


class ModelLoadError(ModelRuntimeError):
    """The model file is missing, corrupt, or the runtime refused to load it."""


class InferenceError(ModelRuntimeError):
    """Running the model failed: wrong input name, shape or datatype, or a runtime fault."""
