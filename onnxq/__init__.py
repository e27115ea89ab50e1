"""onnxq: low-bit post-training quantization of ImageNet CNNs as ONNX graph transformations."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onnxq")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

from onnxq.config import QuantConfig
from onnxq.errors import OnnxqError
from onnxq.schemes import Granularity, Observer, Scheme

__all__ = ["Granularity", "Observer", "OnnxqError", "QuantConfig", "Scheme", "__version__"]
