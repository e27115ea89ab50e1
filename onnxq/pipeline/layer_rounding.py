"""Data-aware weight rounding: GPTQ codes and bias correction from layer-input statistics.

``onnxq.pipeline.quantize`` uses it when ``QuantConfig.rounding`` is ``gptq`` or
``bias_correction`` is on. The calibration pass that observes the features also observes the
input of every quantized layer (``prepare`` gives its sinks; ``onnxq.calibration.layer_inputs``);
then

* ``code_choosers`` give ``QuantizeWeightsPass`` each weight's GPTQ codes on the grid its
  observer chose (``onnxq.core.rounding``), so the weights are stored exactly as before;
* ``bias_shifts`` give ``CorrectBiasPass`` each layer's mean output shift ``ΔW E[x]``.

With bias correction the codes are fitted to the centred second moment ``E[x xᵀ] − E[x] E[x]ᵀ``:
the bias takes care of the mean. Second moments are shrunk towards their diagonal where few
samples back them (``rounding.shrink_to_diagonal``); a layer seen on too few samples to keep any
off-diagonal gets no second moment at all and is rounded to nearest, as GPTQ would round it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxq.analysis.plan import QuantPlan, WeightTarget
from onnxq.base.constants import BIASED_OPS
from onnxq.base.errors import OnnxqError
from onnxq.calibration import layer_inputs, streaming
from onnxq.calibration.layer_inputs import InputStatistics, LayerInputs
from onnxq.core.config import QuantConfig
from onnxq.core.rounding import gptq_codes, shrink_to_diagonal
from onnxq.core.schemes import Granularity
from onnxq.core.weight_quantization import CodeChooser, QuantizedWeight
from onnxq.io.data import ImageSet


@dataclasses.dataclass
class LayerRounding:
    """What the data-aware rounding of one plan needs: statistics and the float weights."""

    targets: list[WeightTarget]
    inputs: LayerInputs  # filled by the calibration pass (``sinks``)
    float_weights: dict[str, np.ndarray]  # by weight name, before quantization
    biased: set[str]  # nodes whose bias is corrected
    gptq: bool

    @property
    def statistics(self) -> dict[str, InputStatistics]:
        """The layer-input statistics by node name."""
        return self.inputs.statistics

    def sinks(self) -> dict[str, list[streaming.Sink]]:
        """What the calibration pass feeds, by tensor name."""
        return self.inputs.sinks()

    def code_choosers(self) -> dict[str, CodeChooser]:
        """GPTQ code choosers by weight name (none when rounding to nearest, and none for a
        layer whose second moment was not kept: its codes are round-to-nearest)."""
        if not self.gptq:
            return {}
        choosers: dict[str, CodeChooser] = {}
        for target in self.targets:
            if target.weight not in choosers and self.statistics[target.node].has_gram:
                shape = self.float_weights[target.weight].shape
                choosers[target.weight] = _GptqChooser(target, shape, self)
        return choosers

    def bias_shifts(self, quantized: Mapping[str, QuantizedWeight]) -> dict[str, np.ndarray]:
        """``ΔW E[x]`` per output channel, for every node whose bias is corrected."""
        shifts = {}
        for target in self.targets:
            if target.node in self.biased:
                observed = self.statistics[target.node]
                delta = quantized[target.weight].dequantize() - self.float_weights[target.weight]
                rows = _rows(delta, target.out_axis, observed.geometry.groups)
                shifts[target.node] = np.einsum("grd,gd->gr", rows, observed.mean()).reshape(-1)
        return shifts

    def hessian(self, target: WeightTarget) -> np.ndarray:
        """The second moment GPTQ fits for ``target``'s layer (centred if its bias is corrected)."""
        observed = self.statistics[target.node]
        hessian = observed.hessian()  # a new float64 array, changed in place from here on
        if target.node in self.biased:
            mean = observed.mean()
            hessian -= mean[:, :, None] * mean[:, None, :]
        return shrink_to_diagonal(hessian, observed.gram_count)


class _GptqChooser:
    """``CodeChooser`` for one weight: GPTQ on its layer's ``[g, R, D]`` rows."""

    def __init__(self, target: WeightTarget, shape: tuple[int, ...], rounding: LayerRounding) -> None:
        self.target = target
        self.shape = shape  # the weight's own shape
        self.rounding = rounding

    def __call__(self, view: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
        scheme = self.target.scheme
        hessian = self.rounding.hessian(self.target)  # built when needed: one at a time
        groups, depth = hessian.shape[:2]
        weight, step, offset = (
            self._layer_rows(array, groups, depth) for array in (view, scale, zero_point)
        )
        codes = gptq_codes(
            weight, hessian, step, offset, scheme.bits, scheme.signed, scheme.restricted
        )
        return self._view(codes, view.shape)

    @property
    def per_tensor(self) -> bool:
        return self.target.scheme.granularity is Granularity.TENSOR

    def _layer_rows(self, array: np.ndarray, groups: int, depth: int) -> np.ndarray:
        """A quantity laid out like the quantizer's view, as ``[g, R, D]`` layer rows."""
        if not self.per_tensor:  # the view already has one output channel per row
            return array.reshape(groups, -1, depth)
        return _rows(array.reshape(self.shape), self.target.out_axis, groups)

    def _view(self, codes: np.ndarray, view_shape: tuple[int, ...]) -> np.ndarray:
        """``[g, R, D]`` codes back in the quantizer's view layout."""
        rows = codes.reshape(-1, codes.shape[2])
        if self.per_tensor:
            rows = rows.reshape(self.shape) if self.target.out_axis == 0 else rows.T
        return rows.reshape(view_shape)


def _rows(weight: np.ndarray, out_axis: int, groups: int) -> np.ndarray:
    """A weight-shaped array as ``[g, R, D]`` rows (output channels along ``out_axis``)."""
    rows = weight if out_axis == 0 else weight.T
    return rows.reshape(groups, rows.shape[0] // groups, -1)


def prepare(
    model: ir.Model, plan: QuantPlan, config: QuantConfig, images: ImageSet | None
) -> LayerRounding | None:
    """Empty statistics of the layer inputs that ``config``'s rounding needs, for ``images``
    (None: round to nearest); feed them ``sinks()`` over the same images."""
    if config.rounding == "nearest" and not config.bias_correction:
        return None
    if images is None:
        raise OnnxqError(
            "--rounding gptq and --bias-correction need calibration images (--calib DIR)"
        )
    nodes = {node.name: node for node in model.graph}
    floats = {
        t.weight: nodes[t.node].inputs[t.input_index].const_value.numpy().copy()
        for t in plan.weights
    }
    gptq = config.rounding == "gptq"
    observed = layer_inputs.observe(model, plan.weights, len(images), config.seed, gptq)
    biased = {
        t.node for t in plan.weights if config.bias_correction and nodes[t.node].op_type in BIASED_OPS
    }
    return LayerRounding(list(plan.weights), observed, floats, biased, gptq)
