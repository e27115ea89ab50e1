"""Calibration: run the float model on images and stream its features into observers."""

from __future__ import annotations

from collections.abc import Mapping

import onnx_ir as ir

from onnxq import data, progress, runtime
from onnxq.observers import FeatureObserver, make_feature_observer
from onnxq.preprocessing import Preprocessing
from onnxq.schemes import Scheme


def collect(
    model: ir.Model,
    schemes: Mapping[str, Scheme],
    images: data.ImageSet,
    preprocessing: Preprocessing,
    batch_size: int = 16,
    ep: str = "auto",
) -> dict[str, FeatureObserver]:
    """Observe the tensors named in ``schemes`` over ``images``, one batch at a time.

    The tensors become extra outputs of a temporary copy of the graph; each batch's values go
    straight into the observers and are dropped, so memory does not grow with the image count.
    """
    observers = {name: make_feature_observer(scheme) for name, scheme in schemes.items()}
    if not observers:
        return observers
    session = _session_with_outputs(model, list(observers), ep)
    input_name = session.get_inputs()[0].name
    fetched = [name for name in observers if name != input_name]
    batches = data.iter_batches(images, preprocessing, batch_size)
    for pixels, _ in progress.track(batches, "calibrating", len(images), lambda b: len(b[0])):
        outputs = dict(zip(fetched, session.run(fetched, {input_name: pixels})))
        outputs[input_name] = pixels
        for name, observer in observers.items():
            observer.update(outputs[name])
    return observers


def _session_with_outputs(model: ir.Model, names: list[str], ep: str):
    """A session over ``model`` that also returns the tensors ``names``."""
    values = {v.name: v for node in model.graph for v in node.outputs}
    extra = [values[name] for name in names if name in values and not values[name].is_graph_output()]
    model.graph.outputs.extend(extra)
    try:
        return runtime.create_session(model, ep)
    finally:
        for _ in extra:
            model.graph.outputs.pop()
