"""What reconstruction learns: a weight's rounding (AdaRound) and a feature's step (LSQ, QDrop).

``SoftRounding`` keeps a weight's grid (scale, zero point, code range) and learns, for every
code, whether it is the GPTQ code or its neighbour towards the float weight: code = base + h(V)
with AdaRound's rectified sigmoid h, pushed to 0 or 1 by the annealed regulariser, and read as
``base + (V ≥ 0)`` at the end. ``FakeQuant`` is a feature's QuantizeLinear → DequantizeLinear
with a learned scale (LSQ: the straight-through rounding gives the scale its gradient) and,
while training, QDrop's random dropping of the quantization of single elements.
"""

from __future__ import annotations

import numpy as np
import torch

#: AdaRound's stretch of the sigmoid, so that h reaches 0 and 1 exactly.
_ZETA, _GAMMA = 1.1, -0.1
#: How far from 0.5 the initial h of a code is, at least, so that hard rounding starts at it.
_MARGIN = 0.05


class SoftRounding(torch.nn.Module):
    """A weight dequantized from learned codes on a fixed grid.

    ``target``: the float weight in code units (``w / scale + zero_point``, the codes' layout);
    ``codes``: the starting codes (GPTQ's); ``scale``/``zero_point`` broadcast to the codes'
    shape; ``shape``: the layout the layer reads (a Reshape of the codes' layout).
    """

    def __init__(
        self,
        target: np.ndarray,
        codes: np.ndarray,
        scale: np.ndarray,
        zero_point: np.ndarray,
        code_range: tuple[int, int],
        shape: tuple[int, ...],
    ) -> None:
        super().__init__()
        up = codes >= target  # the other candidate lies below the code
        base = np.where(up, codes - 1, codes).astype(np.float32)
        rest = target - base
        rest = np.where(up, np.maximum(rest, 0.5 + _MARGIN), np.minimum(rest, 0.5 - _MARGIN))
        rest = np.clip(rest, 0.01, 0.99)
        probability = (rest - _GAMMA) / (_ZETA - _GAMMA)
        self.logits = torch.nn.Parameter(torch.from_numpy(np.log(probability / (1 - probability))
                                                          .astype(np.float32)))
        self.register_buffer("base", torch.from_numpy(base))
        self.register_buffer("scale", torch.from_numpy(_compact(np.asarray(scale, np.float32))))
        self.register_buffer("zero_point",
                             torch.from_numpy(_compact(np.asarray(zero_point, np.float32))))
        self.low, self.high = code_range
        self.shape = tuple(shape)
        self.soft = True

    def rounding(self) -> torch.Tensor:
        """h ∈ [0, 1] while soft; 0 or 1 once hard."""
        if not self.soft:
            return (self.logits >= 0).to(self.base.dtype)
        stretched = torch.sigmoid(self.logits) * (_ZETA - _GAMMA) + _GAMMA
        return stretched.clamp(0, 1)

    def forward(self) -> torch.Tensor:
        codes = torch.clamp(self.base + self.rounding(), self.low, self.high)
        return ((codes - self.zero_point) * self.scale).reshape(self.shape)

    def regularizer(self, beta: float) -> torch.Tensor:
        """AdaRound's Σ 1 − |2h − 1|^β: zero once every h is 0 or 1."""
        return (1 - (2 * self.rounding() - 1).abs().pow(beta)).sum()

    def hard_codes(self) -> np.ndarray:
        """The codes as the graph stores them (int32, the codes' layout)."""
        codes = torch.clamp(self.base + (self.logits >= 0).to(self.base.dtype), self.low, self.high)
        return codes.detach().cpu().numpy().astype(np.int32)


def _compact(array: np.ndarray) -> np.ndarray:
    """``array`` cut to one slice along every axis it is constant along, so that it broadcasts
    back to its shape: a per-channel scale laid out to the weight's shape holds one value per
    channel again (the weight-sized copies cost a network's weights twice over)."""
    for axis in range(array.ndim):
        first = np.take(array, [0], axis=axis)
        if array.shape[axis] > 1 and np.array_equal(array, np.broadcast_to(first, array.shape)):
            array = first
    return np.ascontiguousarray(array)


class FakeQuant(torch.nn.Module):
    """QuantizeLinear → DequantizeLinear of a feature with a learned scale.

    ``scale``/``zero_point`` as the graph stores them (a scalar, or one per channel along
    ``axis``); ``drop``: the probability that an element keeps its float value while training.
    The drop masks are windows at random offsets into one random mask drawn once, which costs
    nothing per step (drawing a fresh mask per element and step costs more than the block's
    convolutions on a CPU).
    """

    def __init__(
        self,
        scale: np.ndarray,
        zero_point: np.ndarray,
        code_range: tuple[int, int],
        axis: int = 1,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.from_numpy(np.array(scale, np.float32)))
        self.register_buffer("zero_point", torch.from_numpy(np.array(zero_point, np.float32)))
        self.low, self.high = code_range
        self.axis, self.drop = axis, drop
        self._masks: torch.Tensor | None = None

    def _broadcast(self, parameter: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if parameter.dim() == 0:
            return parameter
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return parameter.reshape(shape)

    def _keep_float(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.training or self.drop <= 0:
            return None
        if self._masks is None or self._masks.numel() < 2 * x.numel():
            self._masks = torch.rand(2 * x.numel(), device=x.device) < self.drop
        offset = int(torch.randint(0, self._masks.numel() - x.numel() + 1, ()))
        return self._masks[offset : offset + x.numel()].view(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FakeQuantize.apply(
            x,
            self._broadcast(self.scale, x),
            self._broadcast(self.zero_point, x),
            self.low,
            self.high,
            self._keep_float(x),
        )

    def learned_scale(self) -> np.ndarray:
        return self.scale.detach().cpu().numpy().astype(np.float32)


class _FakeQuantize(torch.autograd.Function):
    """``(clamp(round(x / s) + z, low, high) − z) · s`` with LSQ's gradients: 1 for ``x``
    inside the range (straight through), ``round(x/s) − x/s`` for ``s`` inside and
    ``clamp(…) − z`` outside; elements in ``keep_float`` pass ``x`` unchanged."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, low, high, keep_float):
        scaled = x / scale
        codes = torch.round(scaled)
        scale_factor = codes - scaled
        del scaled
        codes += zero_point
        inside = (codes >= low) & (codes <= high)
        codes.clamp_(low, high)
        codes -= zero_point
        scale_factor = torch.where(inside, scale_factor, codes)
        y = codes.mul_(scale)
        if keep_float is not None:
            y = torch.where(keep_float, x, y)
            scale_factor.masked_fill_(keep_float, 0)
            inside |= keep_float
        ctx.save_for_backward(inside, scale_factor)
        ctx.scale_shape = scale.shape
        return y

    @staticmethod
    def backward(ctx, grad):
        inside, scale_factor = ctx.saved_tensors
        grad_x = grad * inside
        grad_scale = _sum_to(grad * scale_factor, ctx.scale_shape)
        return grad_x, grad_scale, None, None, None, None


def _sum_to(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``tensor`` summed over the dimensions a parameter of ``shape`` was broadcast along."""
    if len(shape) == 0:
        return tensor.sum()
    dims = [d for d, size in enumerate(shape) if size == 1]
    return tensor.sum(dims, keepdim=True)


class GridBias(torch.nn.Module):
    """A layer's bias on the integer grid every integer runtime stores it on.

    A layer that reads a per-tensor quantized feature (scale ``s_x``, learned by ``feature``)
    through a quantized weight (``weight_scale``: one per output channel, or one) computes in
    int32 and adds its bias as int32 codes of step ``s_x · s_w`` (ONNX's QLinearConv; ONNX
    Runtime's optimizer rounds a float bias there too). The bias is learned in float and read
    rounded to that grid (straight through); ``learn=False`` keeps its value and only rounds it.
    """

    def __init__(
        self, bias: np.ndarray, feature: FakeQuant, weight_scale: np.ndarray, learn: bool = True
    ) -> None:
        super().__init__()
        self.value = torch.nn.Parameter(torch.from_numpy(np.array(bias, np.float32)),
                                        requires_grad=learn)
        self.feature = feature
        self.register_buffer("weight_scale",
                             torch.from_numpy(np.array(weight_scale, np.float32).reshape(-1)))

    def step(self) -> torch.Tensor:
        """The grid's step per output channel, ``s_x · s_w``."""
        return self.feature.scale.reshape(()) * self.weight_scale

    def forward(self) -> torch.Tensor:
        step = self.step()
        scaled = self.value / step
        return (scaled + (torch.round(scaled) - scaled).detach()) * step

    def stored(self) -> np.ndarray:
        """The bias as the graph stores it: float32, exactly on the grid, so a runtime's
        rounding to int32 gives back the same codes."""
        return self().detach().cpu().numpy().astype(np.float32)
