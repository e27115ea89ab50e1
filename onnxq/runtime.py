"""ONNX Runtime sessions: the CUDA execution provider when present, the CPU one otherwise."""

from __future__ import annotations

from collections.abc import Mapping

import onnx_ir as ir
import onnxruntime as ort

from onnxq.errors import OnnxqError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
EP_CHOICES = ("auto", "cuda", "cpu")
#: Session configuration that makes ONNX Runtime fold constant DequantizeLinear nodes (quantized
#: weights) into float initializers when it loads a model. It also turns off its integer-kernel
#: (QDQ) fusions, so it suits 4-bit and per-group models, not W8A8 ones.
FOLD_WEIGHTS_AT_LOAD = {"session.disable_quant_qdq": "1"}

_settings: dict[str, int | None] = {"threads": None}


def set_threads(threads: int | None) -> None:
    """Intra-op threads of the sessions this process creates from now on (None: ORT's choice).

    Several jobs sharing one machine each take a share of its cores instead of all of them.
    """
    _settings["threads"] = threads


def providers(ep: str = "auto") -> list[str]:
    """The provider list for ``ep`` (``auto``: CUDA when this onnxruntime build has it)."""
    available = ort.get_available_providers()
    if ep == "cpu":
        return [CPU]
    if ep == "cuda":
        if CUDA not in available:
            raise OnnxqError("the CUDA execution provider is not available (pip install onnxruntime-gpu)")
        return [CUDA, CPU]
    if ep == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise OnnxqError(f"unknown execution provider {ep!r} (choose from {', '.join(EP_CHOICES)})")


def create_session(
    model: ir.Model | bytes | str,
    ep: str = "auto",
    threads: int | None = None,
    config: Mapping[str, str] | None = None,
    memory_pattern: bool = True,
) -> ort.InferenceSession:
    """An inference session for an in-memory model, serialized bytes or a file path.

    ``config`` holds session configuration entries, e.g. ``FOLD_WEIGHTS_AT_LOAD``.
    ``memory_pattern=False`` turns off ONNX Runtime's memory pattern planning, which otherwise
    lets peak memory grow over a long stream of runs that return many intermediate tensors.
    """
    if isinstance(model, ir.Model):
        model = ir.serde.serialize_model(model).SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_mem_pattern = memory_pattern
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    threads = threads or _settings["threads"]
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model, options, providers=providers(ep))
    except (ort.capi.onnxruntime_pybind11_state.Fail, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise OnnxqError(f"ONNX Runtime cannot load the model: {first_line}") from None


def active_provider(session: ort.InferenceSession) -> str:
    """The provider that runs the session's nodes first (CUDA falls back to CPU silently)."""
    return session.get_providers()[0]
