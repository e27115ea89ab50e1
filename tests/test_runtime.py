"""Execution-provider choice: what a session asks ONNX Runtime for, with or without a GPU.

The machines that run the suite have no GPU, so CUDA is simulated: ONNX Runtime is told that
its CUDA provider exists, and a CPU-only build then silently runs the session on the CPU,
which is exactly the fallback ``--ep cuda`` must refuse.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from tiny_models import tiny_cnn

from onnxq.base.errors import OnnxqError
from onnxq.io import runtime


@pytest.fixture
def model_bytes() -> bytes:
    return tiny_cnn().SerializeToString()


@pytest.fixture
def cuda_listed(monkeypatch: pytest.MonkeyPatch) -> list[ort.SessionOptions]:
    """Pretend this onnxruntime build has the CUDA provider; record every session's options."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [runtime.CUDA, runtime.CPU])
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: None, raising=False)
    seen: list[ort.SessionOptions] = []
    real_session = ort.InferenceSession

    def recording_session(model, options, providers):
        seen.append(options)
        return real_session(model, options, providers=[runtime.CPU])

    monkeypatch.setattr(ort, "InferenceSession", recording_session)
    return seen


def test_cuda_missing_from_the_build_is_a_clear_error() -> None:
    if runtime.CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    with pytest.raises(OnnxqError, match="onnxruntime-gpu in place of onnxruntime"):
        runtime.providers("cuda")
    assert runtime.providers("auto") == [runtime.CPU]


def test_cuda_that_falls_back_to_cpu_is_refused(model_bytes, cuda_listed) -> None:
    with pytest.raises(OnnxqError, match="could not start its CUDA execution provider"):
        runtime.create_session(model_bytes, ep="cuda")


def test_cuda_sessions_fold_weight_dequantization_at_load(model_bytes, cuda_listed) -> None:
    (key, value), = runtime.FOLD_WEIGHTS_AT_LOAD.items()
    session = runtime.create_session(model_bytes, ep="auto")  # CUDA listed: auto picks it
    assert session.get_providers() == [runtime.CPU]
    assert cuda_listed[-1].get_session_config_entry(key) == value


def test_cpu_sessions_keep_integer_kernels(model_bytes, monkeypatch) -> None:
    (key, _), = runtime.FOLD_WEIGHTS_AT_LOAD.items()
    seen = []
    real_session = ort.InferenceSession

    def recording_session(model, options, providers):
        seen.append(options)
        return real_session(model, options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", recording_session)
    runtime.create_session(model_bytes, ep="cpu")
    with pytest.raises(RuntimeError, match="does not have configuration"):
        seen[0].get_session_config_entry(key)  # never set


@pytest.mark.parametrize("fixed", [1, 3])
def test_a_fixed_batch_model_runs_any_batch(fixed) -> None:
    proto = tiny_cnn()
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = fixed
    dynamic = runtime.create_session(tiny_cnn().SerializeToString(), "cpu")
    session = runtime.create_session(proto.SerializeToString(), "cpu")
    assert isinstance(session, runtime.FixedBatchSession) and session.batch == fixed
    assert not isinstance(dynamic, runtime.FixedBatchSession)
    pixels = np.random.default_rng(0).normal(size=(7, 3, 32, 32)).astype(np.float32)
    (expected,) = dynamic.run(None, {"input": pixels})
    (logits,) = session.run(None, {"input": pixels})
    assert logits.shape == expected.shape == (7, 10)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    assert session.get_inputs()[0].shape[0] == fixed  # the rest is the wrapped session's
