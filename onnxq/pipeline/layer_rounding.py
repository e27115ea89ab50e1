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

Layer inputs come from the float network (``gptq_inputs`` ``float``: one calibration pass
serves every layer), or stage by stage from the network whose earlier stages are already
quantized (``quantized``): the layers are split into ``gptq_stages`` runs in graph order; each
later stage gets one more pass, through the float network and the partly quantized one side
by side (``observe_stage``), and its layers are fitted to the float layer's output
(``rounding.float_target``) and bias-corrected against it. A stage's second moments are
dropped once its codes are chosen.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxq.analysis.plan import QuantPlan, WeightTarget
from onnxq.base.constants import BIASED_OPS
from onnxq.base.errors import OnnxqError
from onnxq.calibration import layer_inputs, streaming
from onnxq.calibration.layer_inputs import InputStatistics, LayerInputs
from onnxq.core.config import QuantConfig
from onnxq.core.rounding import float_target, gptq_codes, shrink_to_diagonal
from onnxq.core.schemes import Granularity
from onnxq.core.weight_quantization import CodeChooser, QuantizedWeight
from onnxq.io import runtime
from onnxq.io.data import ImageSet
from onnxq.io.preprocessing import Preprocessing

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LayerRounding:
    """What the data-aware rounding of one plan needs: statistics and the float weights."""

    targets: list[WeightTarget]
    inputs: LayerInputs  # filled by the calibration pass (``sinks``), then by ``observe_stage``
    float_weights: dict[str, np.ndarray]  # by weight name, before quantization
    biased: set[str]  # nodes whose bias is corrected
    gptq: bool
    stages: list[list[WeightTarget]] = dataclasses.field(default_factory=list)  # quantized inputs
    float_model: ir.Model | None = None  # the float network, beside the partly quantized one
    seed: int = 0
    device: str | None = None  # torch's device for GPTQ's linear algebra; None: NumPy

    @property
    def sequential(self) -> bool:
        """Whether later layers see the inputs of a network with earlier layers quantized."""
        return len(self.stages) > 1

    @property
    def statistics(self) -> dict[str, InputStatistics]:
        """The layer-input statistics by node name."""
        return self.inputs.statistics

    def sinks(self) -> dict[str, list[streaming.Sink]]:
        """What the calibration pass feeds, by tensor name."""
        return self.inputs.sinks()

    def code_choosers(self, targets: list[WeightTarget] | None = None) -> dict[str, CodeChooser]:
        """GPTQ code choosers by weight name, for ``targets`` (default: all), none when
        rounding to nearest and none for a layer whose second moment was not kept: its codes
        are round-to-nearest."""
        if not self.gptq:
            return {}
        choosers: dict[str, CodeChooser] = {}
        for target in self.targets if targets is None else targets:
            if target.weight not in choosers and self.statistics[target.node].has_gram:
                shape = self.float_weights[target.weight].shape
                choosers[target.weight] = _GptqChooser(target, shape, self)
        return choosers

    def bias_shifts(
        self, quantized: Mapping[str, QuantizedWeight], targets: list[WeightTarget] | None = None
    ) -> dict[str, np.ndarray]:
        """The mean output shift ``Ŵ E[x̃] − W E[x]`` per output channel, for every node of
        ``targets`` (default: all) whose bias is corrected (``ΔW E[x]`` where the layer saw
        float inputs, ``x̃ = x``)."""
        shifts = {}
        for target in self.targets if targets is None else targets:
            if target.node in self.biased:
                observed = self.statistics[target.node]
                groups = observed.geometry.groups
                restored = _rows(quantized[target.weight].dequantize(), target.out_axis, groups)
                original = _rows(self.float_weights[target.weight], target.out_axis, groups)
                float_mean = observed.reference.mean() if observed.paired else observed.mean()
                shift = np.einsum("grd,gd->gr", restored, observed.mean())
                shift -= np.einsum("grd,gd->gr", original, float_mean)
                shifts[target.node] = shift.reshape(-1)
        return shifts

    def hessian(self, target: WeightTarget) -> np.ndarray:
        """The second moment GPTQ fits for ``target``'s layer (centred if its bias is corrected)."""
        observed = self.statistics[target.node]
        hessian = observed.hessian()  # a new float64 array, changed in place from here on
        if target.node in self.biased:
            mean = observed.mean()
            hessian -= mean[:, :, None] * mean[:, None, :]
        return shrink_to_diagonal(hessian, observed.gram_count)

    def fitted_rows(
        self, target: WeightTarget, rows: np.ndarray, hessian: np.ndarray
    ) -> np.ndarray:
        """The ``[g, R, D]`` rows GPTQ rounds: the weight itself, or where the layer saw the
        inputs of a partly quantized network, the weight that best reproduces the float
        layer's output on them (``rounding.float_target``)."""
        observed = self.statistics[target.node]
        if not observed.paired:
            return rows
        difference = observed.cross_moment() - observed.hessian()
        if target.node in self.biased:
            mean = observed.mean()
            difference -= (observed.reference.mean() - mean)[:, :, None] * mean[:, None, :]
        difference = shrink_to_diagonal(difference, observed.gram_count)
        return float_target(rows, hessian, difference)

    def observe_stage(
        self,
        model: ir.Model,
        stage: list[WeightTarget],
        images: ImageSet,
        preprocessing: Preprocessing,
        batch_size: int,
        ep: str,
        description: str,
    ) -> None:
        """Statistics of ``stage``'s layers on the inputs of ``model`` (the network with the
        earlier stages quantized; one pass over ``images``).

        The stage's entry layers (``_stage_entries``) are paired with their float inputs: their
        codes and biases make up for the earlier stages' error. A layer fed by another layer of
        the stage is not: that error reaches it through a layer that makes up for it already
        (pairing it too would correct the same mean shift twice, and cost 23 points of
        agreement with fp32 on EfficientNet-Lite0 in 2 stages); it is fitted to its own
        quantized inputs, as GPTQ fits every layer, and corrects its own rounding's mean shift.
        """
        entries = _stage_entries(self.float_model, stage)
        observed = layer_inputs.observe(
            self.float_model, stage, len(images), self.seed, self.gptq, entries, self.device
        )
        names = sorted(set(observed.tensors.values()))
        pairs = streaming.stream_paired(
            self.float_model, model, names, images, preprocessing, batch_size, ep, description
        )
        for reference, current in pairs:
            for node, statistics in observed.statistics.items():
                tensor = observed.tensors[node]
                statistics.update(current[tensor], reference[tensor] if statistics.paired else None)
        self.inputs.statistics.update(observed.statistics)
        self.inputs.tensors.update(observed.tensors)

    def release(self, stage: list[WeightTarget]) -> None:
        """Drop the second moments of ``stage``'s layers (their codes are chosen)."""
        for target in stage:
            self.statistics[target.node].release_moments()


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
        weight = self.rounding.fitted_rows(self.target, weight, hessian)
        arrays = [_on_device(a, self.rounding.device) for a in (weight, hessian, step, offset)]
        codes = gptq_codes(*arrays, scheme.bits, scheme.signed, scheme.restricted)
        return self._view(_to_numpy(codes), view.shape)

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
    model: ir.Model,
    plan: QuantPlan,
    config: QuantConfig,
    images: ImageSet | None,
    ep: str = "auto",
) -> LayerRounding | None:
    """Empty statistics of the layer inputs that ``config``'s rounding needs, for ``images``
    (None: round to nearest); feed them ``sinks()`` over the same images. GPTQ's linear algebra
    runs on the GPU where ``accelerator(ep)`` finds one."""
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
    gptq = config.rounding in ("gptq", "reconstruct")  # reconstruction starts from GPTQ
    stages = _stages(plan.weights, config.gptq_stages) if config.gptq_inputs == "quantized" else []
    first = stages[0] if stages else plan.weights
    device = accelerator(ep) if gptq else None
    observed = layer_inputs.observe(model, first, len(images), config.seed, gptq, device=device)
    biased = {
        t.node for t in plan.weights if config.bias_correction and nodes[t.node].op_type in BIASED_OPS
    }
    float_model = copy_model(model) if len(stages) > 1 else None
    return LayerRounding(
        list(plan.weights), observed, floats, biased, gptq, stages, float_model, config.seed, device
    )


def accelerator(ep: str) -> str | None:
    """``"cuda"`` where GPTQ's linear algebra runs on an NVIDIA GPU: ``ep`` is not ``cpu``, this
    machine has one (ONNX Runtime's CUDA provider runs the calibration, or the driver's
    devices are there) and torch, an optional dependency, can use it; None otherwise: NumPy.

    The calibration may run on ONNX Runtime's CPU provider meanwhile (onnxruntime without
    CUDA beside a CUDA build of torch): the moments are summed on the GPU all the same.
    """
    if ep == "cpu":
        return None
    if runtime.providers(ep)[0] != runtime.CUDA and not glob.glob("/dev/nvidia[0-9]*"):
        return None  # no GPU: not even torch is imported
    try:
        import torch
    except ImportError:
        logger.info("a GPU but no torch: GPTQ runs on the CPU")
        return None
    return "cuda" if torch.cuda.is_available() else None


def _on_device(array: np.ndarray, device: str | None):
    """``array`` as a torch tensor on ``device``, or itself where ``device`` is None."""
    if device is None:
        return array
    import torch

    return torch.from_numpy(np.require(array, requirements=["C", "W"])).to(device)


def _to_numpy(array) -> np.ndarray:
    return array if isinstance(array, np.ndarray) else array.cpu().numpy()


def _stages(targets: list[WeightTarget], count: int) -> list[list[WeightTarget]]:
    """``targets`` (in graph order) cut into ``count`` runs of nearly equal length; the targets
    of one weight stay together."""
    layers = list(dict.fromkeys(target.weight for target in targets))
    count = max(1, min(count, len(layers)))
    stage_of = {weight: index * count // len(layers) for index, weight in enumerate(layers)}
    stages: list[list[WeightTarget]] = [[] for _ in range(count)]
    for target in targets:
        stages[stage_of[target.weight]].append(target)
    return stages


def _stage_entries(model: ir.Model, stage: list[WeightTarget]) -> set[str]:
    """The layers of ``stage`` whose inputs no layer of ``stage`` reaches, through any path."""
    nodes = {node.name: node for node in model.graph}
    names = {target.node for target in stage}
    reached: set[str] = set()
    frontier = [nodes[name] for name in names]
    while frontier:
        for value in frontier.pop().outputs:
            for use in value.uses():
                if use.node.name not in reached:
                    reached.add(use.node.name)
                    frontier.append(use.node)
    return names - reached


def copy_model(model: ir.Model) -> ir.Model:
    """An independent copy of ``model``."""
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))
