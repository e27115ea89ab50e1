"""Calibration: run the float model on images and stream its features into observers."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import threadpool_limits

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from onnxq.base import progress
from onnxq.core.observers import FeatureObserver, make_feature_observer
from onnxq.core.schemes import Scheme
from onnxq.io import data, runtime
from onnxq.io.preprocessing import Preprocessing

#: Images per calibration batch. Every observed feature of a batch is alive at once (about
#: 100 MiB per image for EfficientNet-Lite0), so small batches keep peak memory low; ONNX
#: Runtime's CPU throughput barely depends on the batch size.
CALIBRATION_BATCH = 4


#: Threads that run a batch's sinks side by side (NumPy and ONNX Runtime release the GIL).
#: Each sink's BLAS calls then get an equal share of the cores: on 2 cores, sinks side by side
#: with one BLAS thread each took EfficientNet-Lite0's GPTQ from 8.2 to 6.3 s, where one sink at
#: a time with two BLAS threads each, or two sinks with two each, did not help.
_CORES = os.cpu_count() or 1
_SINK_THREADS = min(4, _CORES)
#: glibc's ``mallopt`` option for the most malloc arenas.
_M_ARENA_MAX = -8

#: Takes one batch's value of a tensor.
Sink = Callable[[np.ndarray], None]


def make_observers(
    schemes: Mapping[str, Scheme],
    make_observer: Callable[[Scheme], FeatureObserver] = make_feature_observer,
) -> dict[str, FeatureObserver]:
    """One observer per tensor named in ``schemes``."""
    return {name: make_observer(scheme) for name, scheme in schemes.items()}


def observer_sinks(observers: Mapping[str, FeatureObserver]) -> dict[str, list[Sink]]:
    """Each observer's ``update`` as the sink of its tensor."""
    return {name: [observer.update] for name, observer in observers.items()}


def merge_sinks(*groups: Mapping[str, Sequence[Sink]]) -> dict[str, list[Sink]]:
    """The sinks of several consumers, by tensor name."""
    merged: dict[str, list[Sink]] = {}
    for group in groups:
        for name, sinks in group.items():
            merged.setdefault(name, []).extend(sinks)
    return merged


def feed(
    model: ir.Model,
    sinks: Mapping[str, Sequence[Sink]],
    images: data.ImageSet,
    preprocessing: Preprocessing,
    batch_size: int = CALIBRATION_BATCH,
    ep: str = "auto",
    description: str = "calibrating",
) -> None:
    """Stream ``images`` through ``model`` once; each batch's value of every tensor named in
    ``sinks`` goes to that tensor's sinks and is dropped, so memory does not grow with the
    image count. Every consumer of one calibration shares the one pass; a batch's consumers run
    side by side on a few threads (each consumer's own updates stay in batch order)."""
    if not sinks:
        return
    _one_malloc_arena()
    blas_threads = max(1, _CORES // _SINK_THREADS)
    with ThreadPoolExecutor(_SINK_THREADS) as pool, threadpool_limits(blas_threads, "blas"):
        for outputs in stream(model, list(sinks), images, preprocessing, batch_size, ep, description):
            jobs = [pool.submit(consume, outputs[name])
                    for name, consumers in sinks.items() for consume in consumers]
            for job in jobs:
                job.result()


@functools.cache
def _one_malloc_arena() -> None:
    """Make threads share glibc's main malloc arena. Each thread would otherwise get an arena
    of its own that keeps the freed patch buffers it served: with the sink threads, ResNet18's
    GPTQ peaked at 738 MiB instead of 657 (round-to-nearest: 462)."""
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1)


def collect(
    model: ir.Model,
    schemes: Mapping[str, Scheme],
    images: data.ImageSet,
    preprocessing: Preprocessing,
    batch_size: int = CALIBRATION_BATCH,
    ep: str = "auto",
    make_observer: Callable[[Scheme], FeatureObserver] = make_feature_observer,
) -> dict[str, FeatureObserver]:
    """Observe the tensors named in ``schemes`` over ``images`` (``make_observer(scheme)``).

    The tensors become extra outputs of a temporary copy of the graph (see ``feed``).
    """
    observers = make_observers(schemes, make_observer)
    feed(model, observer_sinks(observers), images, preprocessing, batch_size, ep)
    return observers


def stream(
    model: ir.Model,
    names: Sequence[str],
    images: data.ImageSet,
    preprocessing: Preprocessing,
    batch_size: int = CALIBRATION_BATCH,
    ep: str = "auto",
    description: str = "calibrating",
) -> Iterator[dict[str, np.ndarray]]:
    """The values of the tensors ``names`` (the model input among them, if named) per batch."""
    for (outputs,) in _stream((model,), names, images, preprocessing, batch_size, ep, description):
        yield outputs


def stream_paired(
    reference: ir.Model,
    model: ir.Model,
    names: Sequence[str],
    images: data.ImageSet,
    preprocessing: Preprocessing,
    batch_size: int = CALIBRATION_BATCH,
    ep: str = "auto",
    description: str = "calibrating",
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """``stream`` through two models with the same tensor names (a float network and a partly
    quantized copy), batch by batch: each batch is read once and run through both. Each model
    runs only the nodes that ``names`` need."""
    models = (reference, model)
    yield from _stream(models, names, images, preprocessing, batch_size, ep, description, True)


def _stream(
    models: Sequence[ir.Model],
    names: Sequence[str],
    images: data.ImageSet,
    preprocessing: Preprocessing,
    batch_size: int,
    ep: str,
    description: str,
    prune: bool = False,
) -> Iterator[tuple[dict[str, np.ndarray], ...]]:
    input_name = models[0].graph.inputs[0].name
    fetched = [name for name in names if name != input_name]
    sessions = [session_with_outputs(m, fetched, ep, prune) for m in models] if fetched else []
    batches = data.iter_batches(images, preprocessing, batch_size)
    for pixels, _ in progress.track(batches, description, len(images), lambda b: len(b[0])):
        results = []
        for session in sessions or [None] * len(models):
            values = [] if session is None else session.run(fetched, {input_name: pixels})
            outputs = dict(zip(fetched, values))
            outputs[input_name] = pixels
            results.append(outputs)
        yield tuple(results)


def session_with_outputs(model: ir.Model, names: list[str], ep: str, prune: bool = False):
    """A session over ``model`` that also returns the tensors ``names`` (``prune``: only those,
    from a copy of the model without the nodes they do not need).

    Without ONNX Runtime's memory pattern planning: with it, peak memory rose by up to 20% from
    64 to 500 calibration images (EfficientNet-Lite0, W8A8); without it, by 2%, at the same
    speed. Its threads do not spin between runs: the observers and layer statistics work on
    each batch's outputs in between (spinning made GPTQ's calibration pass on
    EfficientNet-Lite0 take 1.5× as long on 2 cores).
    """
    if prune:
        model = _pruned(model, names)
    values = {v.name: v for node in model.graph for v in node.outputs}
    extra = [values[name] for name in names if name in values and not values[name].is_graph_output()]
    model.graph.outputs.extend(extra)
    try:
        return runtime.create_session(model, ep, memory_pattern=False, spinning=False)
    finally:
        for _ in extra:
            model.graph.outputs.pop()


def _pruned(model: ir.Model, names: Sequence[str]) -> ir.Model:
    """A copy of ``model`` whose outputs are the tensors ``names``, without the nodes that do
    not lead to them (ONNX Runtime runs every node of a graph, whatever is fetched)."""
    copy = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    values = {v.name: v for node in copy.graph for v in node.outputs}
    copy.graph.outputs.clear()
    copy.graph.outputs.extend(values[name] for name in names)
    RemoveUnusedNodesPass()(copy)
    return copy
