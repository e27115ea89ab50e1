"""ONNX Runtime sessions: the CUDA execution provider when present, the CPU one otherwise."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxq.base.errors import OnnxqError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
EP_CHOICES = ("auto", "cuda", "cpu")
#: The runtimes onnxq evaluates on and deploys for.
RUNTIMES = ("onnxruntime", "openvino")
#: Session configuration that makes ONNX Runtime fold constant DequantizeLinear nodes (quantized
#: weights) into float initializers when it loads a model. It also turns off its integer-kernel
#: (QDQ) fusions, so it suits 4-bit and per-group models, not W8A8 ones on the CPU. CUDA sessions
#: always use it: the CUDA EP has no integer convolutions (it runs a QDQ model in float either
#: way) and its DequantizeLinear cannot run blocked 8-bit weights ("Unsupported quantization
#: type", ONNX Runtime 1.31), which per-group models have wherever a layer is kept at 8 bits.
FOLD_WEIGHTS_AT_LOAD = {"session.disable_quant_qdq": "1"}

_settings: dict[str, int | None] = {"threads": None}


def set_threads(threads: int | None) -> None:
    """Intra-op threads of the sessions this process creates from now on (None: ORT's choice).

    Several jobs sharing one machine each take a share of its cores instead of all of them.
    """
    _settings["threads"] = threads


def check_runtime(name: str) -> None:
    """Refuse a runtime that is not one of ``RUNTIMES``."""
    if name not in RUNTIMES:
        raise OnnxqError(f"unknown --runtime {name!r} (choose from {', '.join(RUNTIMES)})")


def providers(ep: str = "auto") -> list[str]:
    """The provider list for ``ep`` (``auto``: CUDA when this onnxruntime build has it)."""
    if ep not in EP_CHOICES:
        raise OnnxqError(f"unknown execution provider {ep!r} (choose from {', '.join(EP_CHOICES)})")
    if ep == "cpu":
        return [CPU]
    if CUDA not in ort.get_available_providers():
        if ep == "cuda":
            raise OnnxqError(
                "the CUDA execution provider is not available: install onnxruntime-gpu in place of "
                "onnxruntime (pip uninstall onnxruntime; pip install 'onnxruntime-gpu[cuda,cudnn]')"
            )
        return [CPU]
    _load_cuda_libraries()
    return [CUDA, CPU]


@functools.cache
def _load_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the ``nvidia-*`` pip packages (or PyTorch's), once.

    onnxruntime-gpu finds them only on the library path unless ``preload_dlls`` loads them
    first; without them its CUDA provider fails to load and the session runs on the CPU.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except OSError:
            pass  # libraries on the system path still work; create_session checks the result


def create_session(
    model: ir.Model | bytes | str,
    ep: str = "auto",
    threads: int | None = None,
    config: Mapping[str, str] | None = None,
    memory_pattern: bool = True,
    spinning: bool = True,
) -> ort.InferenceSession | FixedBatchSession:
    """An inference session for an in-memory model, serialized bytes or a file path; over a
    model with a fixed batch dimension, a ``FixedBatchSession`` that runs any batch size.

    ``config`` holds session configuration entries, e.g. ``FOLD_WEIGHTS_AT_LOAD``.
    ``memory_pattern=False`` turns off ONNX Runtime's memory pattern planning, which otherwise
    lets peak memory grow over a long stream of runs that return many intermediate tensors.
    ``spinning=False`` makes ONNX Runtime's idle threads sleep instead of spin-waiting for
    work (which they do by default, within a run and for a while after it): where Python works
    on a run's outputs before the next run, spinning threads take the cores that work needs.
    """
    if isinstance(model, ir.Model):
        model = ir.serde.serialize_model(model).SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_mem_pattern = memory_pattern
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    chosen = providers(ep)
    if CUDA in chosen:
        config = {**FOLD_WEIGHTS_AT_LOAD, **(config or {})}
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    threads = threads or _settings["threads"]
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(model, options, providers=chosen)
    except (ort.capi.onnxruntime_pybind11_state.Fail, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise OnnxqError(f"ONNX Runtime cannot load the model: {first_line}") from None
    if ep == "cuda" and active_provider(session) != CUDA:
        raise OnnxqError(
            "ONNX Runtime could not start its CUDA execution provider (CUDA 12/13 or cuDNN 9 "
            "libraries missing? pip install 'onnxruntime-gpu[cuda,cudnn]'); use --ep cpu or auto"
        )
    batch = fixed_batch(session)
    return FixedBatchSession(session, batch) if batch is not None else session


def logits(
    model: ir.Model | bytes | str, pixels: np.ndarray, ep: str = "auto", batch: int = 32
) -> np.ndarray:
    """``model``'s first output on ``pixels`` (preprocessed images in memory), run ``batch``
    images at a time, as float64 ``[N, K]``."""
    session = create_session(model, ep)
    name = session.get_inputs()[0].name
    parts = [pixels[i:i + batch] for i in range(0, len(pixels), batch)]
    return np.concatenate(
        [session.run(None, {name: x})[0].reshape(len(x), -1).astype(np.float64) for x in parts]
    )


def fixed_batch(session: ort.InferenceSession) -> int | None:
    """The batch size the model's first input fixes, or None when it is dynamic."""
    shape = session.get_inputs()[0].shape
    return shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None


class FixedBatchSession:
    """A session over a model with a fixed batch dimension that runs any batch size.

    ``run`` cuts the inputs into batches of the model's size (the last one padded with copies
    of its last image), runs each and joins the outputs, dropping the rows of the padding.
    Everything else is the wrapped session's.
    """

    def __init__(self, session: ort.InferenceSession, batch: int) -> None:
        self.session = session
        self.batch = batch

    def __getattr__(self, name: str):
        return getattr(self.session, name)

    def run(self, output_names, feeds: Mapping[str, np.ndarray], *args, **kwargs) -> list:
        count = len(next(iter(feeds.values())))
        if count == self.batch:
            return self.session.run(output_names, feeds, *args, **kwargs)
        chunks = []
        for start in range(0, count, self.batch):
            part = {name: _padded(array[start : start + self.batch], self.batch)
                    for name, array in feeds.items()}
            outputs = self.session.run(output_names, part, *args, **kwargs)
            chunks.append((min(self.batch, count - start), outputs))
        return [
            _joined([(rows, results[index]) for rows, results in chunks], self.batch)
            for index in range(len(chunks[0][1]))
        ]


def _padded(array: np.ndarray, batch: int) -> np.ndarray:
    missing = batch - len(array)
    return array if missing == 0 else np.concatenate([array, np.repeat(array[-1:], missing, 0)])


def _joined(parts: list[tuple[int, np.ndarray]], batch: int) -> np.ndarray:
    """One output of every batch, without the padding's rows; an output that is not batch-major
    (a scalar, a shape) is the first batch's."""
    first = parts[0][1]
    if first.ndim == 0 or first.shape[0] % batch:
        return first
    rows = first.shape[0] // batch
    return np.concatenate([output[: count * rows] for count, output in parts])


def active_provider(session: ort.InferenceSession) -> str:
    """The provider that runs the session's nodes first (CUDA falls back to CPU silently)."""
    return session.get_providers()[0]
