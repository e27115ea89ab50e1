"""onnxq: low-bit post-training quantization of ImageNet CNNs as ONNX graph transformations.

The package's top level stays light (its names load on first use), so that ``onnxq`` starts,
and answers Ctrl-C during start-up, without importing ONNX first.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onnxq")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

#: The public names and the modules that define them.
_EXPORTS = {
    "QuantConfig": "onnxq.core.config",
    "OnnxqError": "onnxq.base.errors",
    "Granularity": "onnxq.core.schemes",
    "Observer": "onnxq.core.schemes",
    "Scheme": "onnxq.core.schemes",
}

__all__ = ["Granularity", "Observer", "OnnxqError", "QuantConfig", "Scheme", "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'onnxq' has no attribute {name!r}")
