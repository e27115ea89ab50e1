"""Block reconstruction (BRECQ with QDrop): learn each block's rounding, feature steps, biases.

The quantized model (GPTQ codes, bias-corrected, feature Q/DQ inserted) and the float model it
came from are cut into the same blocks (``analysis.blocks``). Block by block, in graph order, the
quantized block runs in torch on the outputs of the already reconstructed blocks before it, and
its rounding (``learned.SoftRounding``, AdaRound started from GPTQ's codes), the scales of its
feature quantizers (``learned.FakeQuant``, LSQ with QDrop) and its layers' biases, read on the
int32 grid integer kernels add them on (``learned.GridBias``), are learned to minimise the
squared error against the float block's output on the calibration images. A block whose
learned values do not lower that error keeps its starting ones. The grids of the weights stay
the observer's; what comes back is codes, feature scales and biases (on their grid) to store in
the same QDQ graph.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir
import torch

from onnxq.analysis.bias_grid import bias_grid
from onnxq.analysis.blocks import find_blocks
from onnxq.analysis.constant_dq import (
    broadcast_parameters,
    constant_array,
    weight_dequantize,
)
from onnxq.base import progress
from onnxq.base.constants import RECONSTRUCT_ITERATIONS
from onnxq.reconstruction.learned import FakeQuant, GridBias, SoftRounding
from onnxq.reconstruction.torch_graph import GraphModule, quantize_of

logger = logging.getLogger(__name__)

#: Code ranges of a feature's QuantizeLinear output type.
_FEATURE_RANGES = {
    ir.DataType.UINT8: (0, 255), ir.DataType.INT8: (-128, 127),
    ir.DataType.UINT4: (0, 15), ir.DataType.INT4: (-8, 7),
    ir.DataType.UINT16: (0, 65535), ir.DataType.INT16: (-32768, 32767),
}
#: Images per forward pass when a whole block's outputs are computed: the intermediate tensors
#: of a 112×112 stem dominate the peak (ResNet18: 2.19 GB at 32 images, 1.91 GB at 8).
_EVAL_BATCH = 8


@dataclasses.dataclass(frozen=True)
class Settings:
    """How each block is optimised: BRECQ's and QDrop's schedule in fewer, faster steps.

    With a twentieth of their steps at a hundred times their learning rate, AdaRound's
    regulariser weight (0.01) left 4–18 % of EfficientNet-Lite0's roundings undecided at the
    end, and the hard codes lost what the soft ones had gained (block 2 of W4A8: output error
    0.026 → 0.008 soft, 0.043 hard); at 1.0 all are decided and the hard codes keep the gain
    (0.026 → 0.018; W4A4 block 2: 0.223 → 0.150, against 0.169 at 0.01).

    Feature scales step by a share of their own size: a fixed rate of 4e-4 was 1.7 % of an
    8-bit ReLU6 step (6/255) but 0.1 % of a 4-bit one (6/15), and W4A4's scales hardly moved
    in 1000 steps (its block 3 ended at 0.288 with it, at 0.245 with 2 % of each scale).

    Biases step by a tenth of their int32 grid's step (input scale × weight scale), the unit
    a runtime adds them in: about sixteen times larger at 4-bit features than at 8-bit ones.
    Learned so, they lowered EfficientNet-Lite0 W4A4's KL divergence from fp32 by a tenth
    (0.229 → 0.205, two splits of one run each: −0.025 ± 0.015 with the optimisation's own
    noise between seeds) and left W4A8's where it was; float biases at a fixed rate of 1e-3 had
    fitted the calibration images at W4A8 (KL +0.005)."""

    iterations: int = RECONSTRUCT_ITERATIONS
    batch: int = 8
    crop: int = 32  # steps see random crops of this side of larger block inputs
    weight_lr: float = 0.1  # Adam, AdaRound's logits (1e-3 in AdaRound, over 10-20× the steps)
    scale_lr: float = 0.02  # Adam, feature scales, as a share of each quantizer's start scale
    regularizer: float = 1.0  # weight of AdaRound's rounding regulariser
    warmup: float = 0.2  # share of the steps without the regulariser
    beta: tuple[float, float] = (20.0, 2.0)  # the regulariser's exponent, annealed
    drop: float = 0.5  # QDrop: probability that an element skips feature quantization
    bias_lr: float = 0.1  # Adam, biases, as a share of their int32 grid's step; 0: only rounded
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class BlockRecord:
    """One block: its layers, relative output error (‖q − f‖² / ‖f‖² on the calibration
    images) with the starting codes and at the end, whether the learned values were kept."""

    layers: tuple[str, ...]
    start_error: float
    error: float
    kept: bool
    seconds: float


@dataclasses.dataclass
class Reconstruction:
    """Learned codes by layer (int32, the stored layout), the weights they dequantize to (float32,
    the layer's layout), learned scales by quantized feature (float32, the stored shape), and
    what happened in each block."""

    codes: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    scales: dict[str, np.ndarray]
    blocks: list[BlockRecord]
    biases: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def reconstruct(
    quantized: ir.Model,
    reference: ir.Model,
    code_ranges: Mapping[str, tuple[int, int]],
    images: np.ndarray,
    settings: Settings = Settings(),
    device: str = "cpu",
) -> Reconstruction:
    """Learn the codes and feature scales of ``quantized`` against ``reference`` (its float
    model, the same tensor and layer names) on ``images`` (``[N, C, H, W]``, preprocessed).

    ``code_ranges``: the codes each weight may take, by the name of the float weight; layers
    not named there keep their codes.
    """
    torch.manual_seed(settings.seed)
    blocks = find_blocks(reference.graph)
    roundings = _weight_sites(quantized.graph, reference.graph, code_ranges)
    quantizers = _feature_sites(quantized.graph, settings.drop)
    weights = {name: rounding for name, rounding in roundings.values()}
    fake_quant = {out: module for outs, module in quantizers.values() for out in outs}
    biases = _bias_sites(quantized.graph, fake_quant, learn=settings.bias_lr > 0)
    weights.update({name: bias for name, bias in biases.values()})
    pairs = [
        (
            GraphModule(quantized.graph, block.input, block.output, weights, fake_quant),
            GraphModule(reference.graph, block.input, block.output),
        )
        for block in blocks
    ]
    for module in [m for pair in pairs for m in pair]:
        module.to(device)
    x_float = torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(device)
    _announce(pairs, x_float, settings)
    x_quant, records, learned = x_float, [], set()
    for index, (block, (q_block, f_block)) in enumerate(zip(blocks, pairs)):
        start = time.perf_counter()
        y_float = _outputs(f_block, x_float)
        fresh = [module for module in _quantizers_of(q_block) if id(module) not in learned]
        learned.update(id(module) for module in fresh)
        block_settings = dataclasses.replace(settings, crop=_crop_side(f_block, x_float, settings))
        start_error, error, kept = _reconstruct_block(
            (q_block, f_block), fresh, (x_quant, x_float), y_float, block_settings,
            f"block {index + 1}/{len(blocks)}",
        )
        x_float = y_float  # the block's float input is freed before its quantized output is made
        x_quant = _outputs(q_block, x_quant)
        records.append(BlockRecord(block.layers, start_error, error, kept,
                                   time.perf_counter() - start))
        logger.info("block %d (%s): output error %.4g → %.4g%s", index + 1,
                    ", ".join(block.layers), start_error, error, "" if kept else " (not kept)")
    codes, weights = {}, {}
    for layer, (_, rounding) in roundings.items():
        rounding.soft = False
        codes[layer] = rounding.hard_codes()
        weights[layer] = rounding().detach().cpu().numpy()
    scales = {tensor: module.learned_scale() for tensor, (_, module) in quantizers.items()}
    stored_biases = {layer: bias.stored() for layer, (_, bias) in biases.items()}
    return Reconstruction(codes, weights, scales, records, stored_biases)


def _weight_sites(
    graph: ir.Graph, reference: ir.Graph, code_ranges: Mapping[str, tuple[int, int]]
) -> dict[str, tuple[str, SoftRounding]]:
    """Layer name → (the weight tensor the layer reads, its learned rounding)."""
    float_layers = {node.name: node for node in reference}
    sites = {}
    for node in graph:
        dequantize = weight_dequantize(node.inputs[1]) if len(node.inputs) > 1 else None
        original = float_layers.get(node.name)
        if dequantize is None or original is None or original.inputs[1].const_value is None:
            continue
        code_range = code_ranges.get(original.inputs[1].name)
        if code_range is None:
            continue
        codes, scale, zero_point = broadcast_parameters(dequantize)
        weight = original.inputs[1].const_value.numpy()
        target = weight.reshape(codes.shape) / scale + zero_point
        if np.abs(target - codes).mean() > 1:
            logger.warning("%s: its codes are not a rounding of its float weight; kept", node.name)
            continue
        rounding = SoftRounding(target, codes, scale, zero_point, code_range, weight.shape)
        sites[node.name] = (node.inputs[1].name, rounding)
    return sites


def _feature_sites(graph: ir.Graph, drop: float) -> dict[str, tuple[list[str], FakeQuant]]:
    """Quantized feature → (the DequantizeLinear outputs that read its codes, its quantizer)."""
    readers: dict[str, list[ir.Node]] = {}
    for node in graph:
        quantize = quantize_of(node)
        if quantize is not None and constant_array(quantize.inputs[0]) is None:
            readers.setdefault(quantize.name, []).append(node)
    sites = {}
    for node in graph:
        if node.name not in readers:
            continue
        scale = constant_array(node.inputs[1])
        zero_point = constant_array(node.inputs[2]) if len(node.inputs) > 2 else None
        dtype = node.inputs[2].dtype if zero_point is not None else ir.DataType.UINT8
        if zero_point is None:
            zero_point = np.zeros_like(scale)
        low, high = _FEATURE_RANGES[dtype]
        for reader in readers[node.name]:  # a Clip between narrows the codes
            clip = reader.inputs[0].producer()
            if clip is not None and clip.op_type == "Clip":
                low = max(low, int(constant_array(clip.inputs[1])))
                high = min(high, int(constant_array(clip.inputs[2])))
        axis = node.attributes.get_int("axis", 1)
        quantizer = FakeQuant(scale, zero_point, (low, high), axis, drop)
        outputs = [reader.outputs[0].name for reader in readers[node.name]]
        sites[node.inputs[0].name] = (outputs, quantizer)
    return sites


def _bias_sites(
    graph: ir.Graph, fake_quant: Mapping[str, FakeQuant], learn: bool
) -> dict[str, tuple[str, GridBias]]:
    """Layer name → (its bias initializer, the bias on its int32 grid), for every layer whose
    bias an integer runtime rounds (``analysis.bias_grid``), whose input quantizer is learned
    here and whose bias no other layer reads."""
    sites = {}
    for node in graph:
        grid = bias_grid(node)
        feature = fake_quant.get(node.inputs[0].name) if grid is not None else None
        if feature is None or len(grid.bias.uses()) != 1:
            continue
        sites[node.name] = (grid.bias.name, GridBias(grid.bias.const_value.numpy(), feature,
                                                     grid.weight_scale, learn))
    return sites


def _roundings_of(module: GraphModule) -> list[SoftRounding]:
    return [m for m in module.learned.values() if isinstance(m, SoftRounding)]


def _quantizers_of(module: GraphModule) -> list[FakeQuant]:
    return [m for m in module.learned.values() if isinstance(m, FakeQuant)]


def _biases_of(module: GraphModule) -> list[GridBias]:
    return [m for m in module.learned.values() if isinstance(m, GridBias)]


@torch.no_grad()
def _outputs(module: GraphModule, x: torch.Tensor) -> torch.Tensor:
    """``module`` on every image of ``x`` (inference: hard codes, no dropping)."""
    module.eval()
    return torch.cat([module(x[i:i + _EVAL_BATCH]) for i in range(0, len(x), _EVAL_BATCH)])


@torch.no_grad()
def _block_error(module: GraphModule, x: torch.Tensor, target: torch.Tensor) -> float:
    """‖module(x) − target‖² / ‖target‖² over every image of ``x``, a batch at a time (the
    outputs of all images are never held), in float64: features of tens of orders of
    magnitude, as in a network of constant weights, overflow float32 when squared."""
    module.eval()
    error = energy = 0.0
    for i in range(0, len(x), _EVAL_BATCH):
        rows = slice(i, i + _EVAL_BATCH)
        batch_error, batch_energy = _squares(module(x[rows]), target[rows])
        error, energy = error + batch_error, energy + batch_energy
    return _ratio(error, energy)


def _mean_square(x: torch.Tensor) -> float:
    """The mean of ``x``², in float64, a batch at a time."""
    total = sum(float(x[i:i + _EVAL_BATCH].double().pow(2).sum())
                for i in range(0, len(x), _EVAL_BATCH))
    return total / max(x.numel(), 1)


def _squares(output: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """‖output − target‖² and ‖target‖², in float64."""
    output, target = output.double(), target.double()
    return float(((output - target) ** 2).sum()), float((target**2).sum())


def _ratio(error: float, energy: float) -> float:
    """The relative error; 0 for a zero target matched exactly, infinite for one missed."""
    if energy == 0:
        return 0.0 if error == 0 else math.inf
    return error / energy


def _reconstruct_block(
    blocks: tuple[GraphModule, GraphModule],
    quantizers: list[FakeQuant],
    inputs: tuple[torch.Tensor, torch.Tensor],
    y_float: torch.Tensor,
    settings: Settings,
    description: str,
) -> tuple[float, float, bool]:
    """Optimise the quantized block of ``blocks`` (quantized, float) on ``inputs`` (its own,
    the float block's); returns its relative error before and after and whether the learned
    values were kept (they are not when they do not lower the error)."""
    q_block, x_quant = blocks[0], inputs[0]
    learned = _Learned(_roundings_of(q_block), quantizers,
                       [b for b in _biases_of(q_block) if b.value.requires_grad])
    learned.harden()
    start_error = _block_error(q_block, x_quant, y_float)
    if not settings.iterations or not learned.parameters():
        return start_error, start_error, False
    saved = learned.snapshot()
    _optimise(blocks, learned, inputs, y_float, settings, description)
    learned.harden()
    error = _block_error(q_block, x_quant, y_float)
    if not error < start_error:  # also when the steps diverged to NaN
        learned.restore(saved)
        return start_error, start_error, False
    return start_error, error, True


@dataclasses.dataclass
class _Learned:
    """What one block learns: its weights' roundings, its new feature quantizers' scales and
    its layers' biases."""

    roundings: list[SoftRounding]
    quantizers: list[FakeQuant]
    biases: list[GridBias]

    def parameters(self) -> list[torch.nn.Parameter]:
        return ([r.logits for r in self.roundings] + [q.scale for q in self.quantizers]
                + [b.value for b in self.biases])

    def harden(self, hard: bool = True) -> None:
        for rounding in self.roundings:
            rounding.soft = not hard

    def snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.parameters()]

    def restore(self, saved: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for parameter, value in zip(self.parameters(), saved):
                parameter.copy_(value)


def _optimise(
    blocks: tuple[GraphModule, GraphModule],
    learned: _Learned,
    inputs: tuple[torch.Tensor, torch.Tensor],
    y_float: torch.Tensor,
    settings: Settings,
    description: str,
) -> None:
    """AdaRound's schedule: reconstruction loss alone for the warm-up, then with the rounding
    regulariser whose exponent falls linearly from ``beta[0]`` to ``beta[1]``.

    The whole loss is divided by the target's mean square, which Adam does not see but which
    keeps the squares finite on features as large as 1e27 (ONNX's light VGG19, constant
    weights)."""
    q_block, roundings, quantizers = blocks[0], learned.roundings, learned.quantizers
    energy = _mean_square(y_float) or 1.0
    unit, regularizer_weight = math.sqrt(energy), settings.regularizer / energy
    groups = [{"params": [r.logits for r in roundings], "lr": settings.weight_lr}]
    groups += [{"params": [q.scale], "lr": settings.scale_lr * _magnitude(q.scale)}
               for q in quantizers]
    groups += [{"params": [b.value], "lr": settings.bias_lr * _magnitude(b.step())}
               for b in learned.biases]
    optimizer = torch.optim.Adam(groups)
    floors = [q.scale.detach().abs() * 1e-3 for q in quantizers]
    learned.harden(False)
    q_block.train()
    shown = {"loss": math.nan}
    for step in progress.track(range(settings.iterations), description, settings.iterations,
                               note=lambda: f"loss {shown['loss']:.4g}"):
        x_quant, target = _batch(blocks[1], inputs, y_float, settings)
        output = q_block(x_quant)
        loss = ((output - target) / unit).pow(2).sum(1).mean()
        beta = _beta(step, settings)
        if beta is not None and roundings:
            loss = loss + regularizer_weight * sum(r.regularizer(beta) for r in roundings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for quantizer, floor in zip(quantizers, floors):
                quantizer.scale.copy_(torch.maximum(quantizer.scale, floor))
        shown["loss"] = loss.detach().item()
    q_block.eval()


def _magnitude(scale: torch.Tensor) -> float:
    """The mean size of a quantizer's scale: Adam's steps are about its learning rate whatever
    the gradient's size, so a step relative to the scale needs a rate in the scale's units."""
    return float(scale.detach().abs().mean()) or 1.0


def _batch(
    f_block: GraphModule,
    inputs: tuple[torch.Tensor, torch.Tensor],
    y_float: torch.Tensor,
    settings: Settings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of quantized-block inputs and float targets. Inputs larger than
    ``settings.crop`` are cut to a random crop, and the target is the float block's output on
    the same crop of its own input, so both see the same borders."""
    x_quant, x_float = inputs
    rows = torch.randint(0, len(x_quant), (settings.batch,), device=x_quant.device)
    height, width = x_quant.shape[-2:] if x_quant.dim() == 4 else (0, 0)
    if max(height, width) <= settings.crop:
        return x_quant[rows], y_float[rows]
    top = int(torch.randint(0, max(height - settings.crop, 0) + 1, ()))
    left = int(torch.randint(0, max(width - settings.crop, 0) + 1, ()))
    window = (rows, slice(None), slice(top, top + settings.crop), slice(left, left + settings.crop))
    with torch.no_grad():
        target = f_block(x_float[window])
    return x_quant[window], target


@torch.no_grad()
def _crop_side(f_block: GraphModule, x: torch.Tensor, settings: Settings) -> int:
    """The crop side for ``f_block``'s steps: ``settings.crop``, doubled until the block's
    output on a crop is at least 2×2 (a block that strides and pools a lot, such as AlexNet's
    first, has no output at all on 32×32); no larger than the input."""
    if x.dim() != 4:
        return settings.crop
    side, full = settings.crop, max(x.shape[-2:])
    f_block.eval()
    while side < full:
        try:
            output = f_block(x[:1, :, :side, :side])
            if output.dim() != 4 or min(output.shape[-2:]) >= 2:
                return side
        except RuntimeError:  # torch refuses a pooling window larger than its input
            pass
        side *= 2
    return full


def _beta(step: int, settings: Settings) -> float | None:
    """The regulariser's exponent at ``step``; None during the warm-up."""
    progress_share = step / max(settings.iterations, 1)
    if progress_share < settings.warmup:
        return None
    annealed = (progress_share - settings.warmup) / (1 - settings.warmup)
    high, low = settings.beta
    return high + (low - high) * annealed


def _announce(pairs: list[tuple[GraphModule, GraphModule]], x: torch.Tensor,
              settings: Settings) -> None:
    """Time two training steps of every block on one batch (cropped as the steps crop it) and
    say how long the whole run will take."""
    if progress.is_quiet() or not settings.iterations:
        return
    batch = x[: settings.batch]
    seconds = 0.0
    for q_block, f_block in pairs:
        for rounding in _roundings_of(q_block):
            rounding.soft = True
        q_block.train()
        side = _crop_side(f_block, batch, settings)
        crop = batch[..., :side, :side] if batch.dim() == 4 else batch
        for repeat in range(2):
            start = time.perf_counter()
            q_block(crop).pow(2).mean().backward()
            seconds += (time.perf_counter() - start) * repeat
        q_block.zero_grad(set_to_none=True)
        q_block.eval()
        with torch.no_grad():
            batch = f_block(batch)
    total = seconds * settings.iterations
    progress.status(
        f"reconstructing {len(pairs)} blocks, {settings.iterations} steps each: about "
        f"{_duration(total)} on {x.device.type}"
    )


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
