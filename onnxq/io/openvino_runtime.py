"""OpenVINO as a second runtime: a session with the interface ``evaluate`` uses.

OpenVINO (the optional ``openvino`` extra) compiles the ONNX model for a device (``CPU``) with
its default precision hint (bf16 on CPUs that have it, else f32); the session reports both,
as ``active_provider`` does for ONNX Runtime, so a measurement says where it ran.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxq.base.errors import OnnxqError
from onnxq.io import runtime

DEVICE = "CPU"


@dataclasses.dataclass(frozen=True)
class _Input:
    name: str
    shape: list


class OpenVinoSession:
    """A compiled OpenVINO model that runs like an ONNX Runtime session (``run``,
    ``get_inputs``, ``get_providers``)."""

    def __init__(self, compiled, device: str) -> None:
        self.compiled = compiled
        self.device = device
        self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def get_inputs(self) -> list[_Input]:
        return [
            _Input(port.get_any_name(), [d.get_length() if d.is_static else None
                                         for d in port.get_partial_shape()])
            for port in self.compiled.inputs
        ]

    def get_providers(self) -> list[str]:
        return [f"OpenVINO {self.device} ({self.precision})"]

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list:
        results = self.compiled(dict(feeds))
        ports = self.compiled.outputs
        if output_names is not None:
            ports = [port for name in output_names for port in ports if name in port.get_names()]
        return [np.asarray(results[port]) for port in ports]


def create_session(
    model: ir.Model | str, device: str = DEVICE
) -> OpenVinoSession | runtime.FixedBatchSession:
    """Compile ``model`` (in memory or a path) with OpenVINO for ``device``; a model with a
    fixed batch runs any batch, as in ``runtime.create_session``."""
    require_openvino()
    import openvino

    core = openvino.Core()
    with tempfile.TemporaryDirectory() as folder:
        if isinstance(model, ir.Model):
            path = Path(folder) / "model.onnx"
            ir.save(model, path)
            model = str(path)
        try:
            compiled = core.compile_model(core.read_model(str(model)), device)
        except RuntimeError as error:
            hint = (
                " (onnxq deploy MODEL -o OUT --runtime openvino writes a form OpenVINO "
                "compiles: the weights it cannot read folded into float)"
                if "Dequantiz" in str(error) else ""
            )
            raise OnnxqError(
                f"OpenVINO cannot compile the model: {error_summary(error)}{hint}"
            ) from None
    session = OpenVinoSession(compiled, device)
    batch = runtime.fixed_batch(session)
    return runtime.FixedBatchSession(session, batch) if batch is not None else session


def require_openvino() -> None:
    """Refuse ``--runtime openvino`` where the optional ``openvino`` package is missing."""
    if importlib.util.find_spec("openvino") is None:
        raise OnnxqError("--runtime openvino needs OpenVINO: pip install 'onnxq[openvino]'")


def error_summary(error: Exception, limit: int = 400) -> str:
    """The informative part of an OpenVINO exception: its lines without the trail of source
    locations (``Exception from src/…:N:``, ``Check '…' failed at src/…:N:``), joined (at most
    ``limit`` characters)."""
    lines = [line.strip() for line in str(error).splitlines()]
    useful = [
        line for line in lines
        if line and not line.startswith("Exception from ") and " failed at src/" not in line
        and line != "Summary:"
    ]
    return (" ".join(useful) or "unknown error")[:limit]
