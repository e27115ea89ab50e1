"""Check that a function-preserving rewrite kept a model's outputs: run it before and after.

The difference of one output is ``max |after - before| / max |before|``, relative to the
output's own magnitude (an elementwise ratio would explode where an output is near zero).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxq.base.errors import OnnxqError
from onnxq.io import runtime

#: The largest relative output difference a function-preserving pass may introduce.
TOLERANCE = 1e-4


def random_inputs(model: ir.Model, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs; the first symbolic dimension becomes ``batch``."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for value in model.graph.inputs:
        dims = list(value.shape or ())
        if dims and not isinstance(dims[0], int):
            dims[0] = batch
        if not all(isinstance(d, int) for d in dims):
            raise OnnxqError(f"input {value.name} has a symbolic shape {value.shape}; give inputs")
        inputs[value.name] = rng.standard_normal(dims).astype(np.float32)
    return inputs


def run(model: ir.Model, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's outputs on ``inputs`` with ONNX Runtime's CPU provider."""
    return runtime.create_session(model, ep="cpu").run(None, inputs)


def relative_difference(before: list[np.ndarray], after: list[np.ndarray]) -> float:
    """The largest ``max |after - before| / max |before|`` over the outputs."""
    worst = 0.0
    for expected, actual in zip(before, after):
        expected = expected.astype(np.float64)
        scale = max(float(np.abs(expected).max(initial=0.0)), np.finfo(np.float32).tiny)
        worst = max(worst, float(np.abs(actual - expected).max(initial=0.0)) / scale)
    return worst


class OutputCheck:
    """Outputs of a model recorded now, to compare with the same model after a rewrite."""

    def __init__(self, model: ir.Model, inputs: dict[str, np.ndarray] | None = None) -> None:
        self.inputs = inputs if inputs is not None else random_inputs(model)
        self.expected = run(model, self.inputs)

    def difference(self, model: ir.Model) -> float:
        return relative_difference(self.expected, run(model, self.inputs))

    def verify(self, model: ir.Model, what: str) -> None:
        """Raise ``PostconditionError`` when the outputs moved by more than ``TOLERANCE``."""
        difference = self.difference(model)
        if not difference <= TOLERANCE:
            raise ir.passes.PostconditionError(
                f"{what} changed the model's outputs: max relative difference "
                f"{difference:.3g} > {TOLERANCE:g}"
            )
