"""Top-1/top-5 accuracy and throughput of a classifier on labelled images."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping

import numpy as np
import onnx_ir as ir

from onnxq.analysis import constant_dq
from onnxq.base import host, progress
from onnxq.base.errors import OnnxqError
from onnxq.io import data, runtime
from onnxq.io.preprocessing import Preprocessing
from onnxq.pipeline import pass_selection


@dataclasses.dataclass(frozen=True)
class EvalResult:
    images: int
    top1: float  # percent
    top5: float  # percent
    images_per_second: float  # inference only (decoding excluded)
    provider: str
    predictions: tuple[int, ...] = dataclasses.field(repr=False, default=())

    def to_dict(self) -> dict:
        result = dataclasses.asdict(self)
        result.pop("predictions")
        return result

    def agreement(self, other: EvalResult) -> float:
        """How often (percent) ``other``, evaluated on the same images, predicts the same class."""
        if len(self.predictions) != len(other.predictions):
            raise ValueError("agreement needs two evaluations of the same images")
        same = np.asarray(self.predictions) == np.asarray(other.predictions)
        return 100.0 * float(same.mean())


def evaluate(
    model: ir.Model | str,
    images: data.ImageSet,
    preprocessing: Preprocessing,
    batch_size: int = 32,
    ep: str = "auto",
    description: str = "evaluating",
    session_config: Mapping[str, str] | None = None,
    runtime_name: str = "onnxruntime",
) -> EvalResult:
    """Run ``model`` over ``images`` and score its logits against their labels.

    ``session_config`` holds ONNX Runtime session entries (``runtime.FOLD_WEIGHTS_AT_LOAD``).
    ``runtime_name``: ``onnxruntime`` (with execution provider ``ep``) or ``openvino`` (CPU).
    """
    if not images.labelled:
        raise OnnxqError("evaluation needs labelled images")
    session = _session(model, runtime_name, ep, session_config)
    input_name = session.get_inputs()[0].name
    top1 = top5 = 0
    seconds = 0.0
    predictions: list[int] = []
    batches = data.iter_batches(images, preprocessing, batch_size)
    for pixels, labels in progress.track(batches, description, len(images), lambda b: len(b[0])):
        start = time.perf_counter()
        logits = session.run(None, {input_name: pixels})[0]
        seconds += time.perf_counter() - start
        if logits.ndim > 2 and all(d == 1 for d in logits.shape[2:]):  # [N, classes, 1, 1]
            logits = logits.reshape(logits.shape[:2])
        if logits.ndim != 2:
            raise OnnxqError(f"expected logits [N, classes], the model returned shape {logits.shape}")
        best5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        top1 += int((best5[:, 0] == labels).sum())
        top5 += int((best5 == labels[:, None]).any(axis=1).sum())
        predictions.extend(best5[:, 0].tolist())
    count = len(images)
    return EvalResult(
        images=count,
        top1=100.0 * top1 / count,
        top5=100.0 * top5 / count,
        images_per_second=count / seconds if seconds else 0.0,
        provider=runtime.active_provider(session),
        predictions=tuple(predictions),
    )


def _session(model, runtime_name: str, ep: str, session_config: Mapping[str, str] | None):
    runtime.check_runtime(runtime_name)
    if runtime_name == "onnxruntime":
        session = runtime.create_session(model, ep, config=session_config)
        if runtime.active_provider(session) == runtime.CPU and not session_config:
            _warn_if_int8_kernels_saturate(model)
        return session
    from onnxq.io import openvino_runtime

    return openvino_runtime.create_session(model)


def _warn_if_int8_kernels_saturate(model: ir.Model | str) -> None:
    """A note when this CPU's int8 kernels will clip some of ``model``'s full-range int8 weights."""
    if not host.int8_kernels_saturate():
        return
    if not isinstance(model, ir.Model):
        model = ir.load(model)
    count = constant_dq.full_range_int8_weights(model.graph, host.NON_SATURATING_CODE)
    if count:
        progress.status(
            f"[yellow]note:[/] {count} int8 weights use codes beyond ±{host.NON_SATURATING_CODE}, "
            "and this x86 CPU has no VNNI: ONNX Runtime's int8 kernels saturate on them here, so "
            "accuracy measured here is lower than on CPUs with VNNI (quantize with "
            "--reduce-range for CPUs like this one)."
        )


def logit_cosines(
    reference: ir.Model | str,
    model: ir.Model | str,
    images: data.ImageSet,
    preprocessing: Preprocessing,
    batch_size: int = 32,
    ep: str = "auto",
) -> np.ndarray:
    """Per image, the cosine between ``model``'s logits and ``reference``'s (e.g. fp32's)."""
    cosines = []
    for a, b in paired_logits(reference, model, images, preprocessing, batch_size, ep):
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cosines.append((a * b).sum(axis=1) / np.maximum(norms, np.finfo(np.float64).tiny))
    return np.concatenate(cosines)


def logit_divergences(
    reference: ir.Model | str,
    model: ir.Model | str,
    images: data.ImageSet,
    preprocessing: Preprocessing,
    batch_size: int = 32,
    ep: str = "auto",
) -> np.ndarray:
    """Per image, the KL divergence (nats) of ``model``'s softmax from ``reference``'s: a
    fidelity measure with far less sampling noise than top-1 agreement (every image counts
    by how much, not only whether, its prediction moved)."""
    return np.concatenate([
        pass_selection.kl_per_image(a, b)
        for a, b in paired_logits(reference, model, images, preprocessing, batch_size, ep)
    ])


def paired_logits(
    reference: ir.Model | str,
    model: ir.Model | str,
    images: data.ImageSet,
    preprocessing: Preprocessing,
    batch_size: int,
    ep: str,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of (``reference``'s, ``model``'s) logits on the same images, float64 ``[N, K]``."""
    sessions = [runtime.create_session(m, ep) for m in (reference, model)]
    names = [session.get_inputs()[0].name for session in sessions]
    batches = data.iter_batches(images, preprocessing, batch_size)
    for pixels, _ in progress.track(batches, "comparing logits", len(images), lambda b: len(b[0])):
        yield tuple(
            s.run(None, {name: pixels})[0].reshape(len(pixels), -1).astype(np.float64)
            for s, name in zip(sessions, names)
        )
