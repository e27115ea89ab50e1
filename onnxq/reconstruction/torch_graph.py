"""A stretch of an ONNX graph run by torch, so that autograd can differentiate it.

``GraphModule`` evaluates the nodes between one input tensor and one output tensor in graph
order with the torch functions of ``_OPS`` (the ops image CNNs are made of). Constants (weights,
constant DequantizeLinear results, shapes) are read once with ``analysis.constant_dq``. Two
kinds of value can be supplied from outside: a layer's weight or bias (``weights``: a module
returning it, for learned rounding; the weight by the DequantizeLinear output the layer reads,
the bias by its initializer) and a feature's QuantizeLinear → DequantizeLinear pair
(``fake_quant``: a module taking the float feature, for learned step sizes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F

from onnxq.analysis.constant_dq import constant_array
from onnxq.analysis.graph import values_by_name
from onnxq.base.errors import OnnxqError

Op = Callable[..., torch.Tensor]


class GraphModule(torch.nn.Module):
    """The nodes of ``graph`` that compute ``output`` from ``input``, as a torch module."""

    def __init__(
        self,
        graph: ir.Graph,
        input: str,
        output: str,
        weights: Mapping[str, torch.nn.Module] | None = None,
        fake_quant: Mapping[str, torch.nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.input, self.output = input, output
        weights, fake_quant = dict(weights or {}), dict(fake_quant or {})
        nodes = _nodes_between(graph, input, output, set(weights) | set(fake_quant))
        initializers = _supplied_initializers(nodes, weights)
        used = {node.outputs[0].name for node in nodes} | set(initializers)
        self.learned = torch.nn.ModuleDict(
            {
                _key(name): module
                for name, module in {**weights, **fake_quant}.items()
                if name in used
            }
        )
        self._constants: dict[str, str] = {}  # tensor name → buffer name
        self._steps = [_supplied_step(self.learned, name) for name in initializers]
        self._steps += [self._step(node, weights, fake_quant) for node in nodes]
        self._last_reads = _last_reads(self._steps, self.output)

    def _step(
        self,
        node: ir.Node,
        weights: Mapping[str, torch.nn.Module],
        fake_quant: Mapping[str, torch.nn.Module],
    ) -> tuple[Op, list[str | None], str]:
        out = node.outputs[0].name
        if out in weights:
            return _call(self.learned[_key(out)]), [], out
        if out in fake_quant:
            source = quantize_of(node).inputs[0]
            return _call(self.learned[_key(out)]), [source.name], out
        if node.op_type not in _OPS:
            raise OnnxqError(
                f"reconstruction cannot run {node.op_type} ({node.name}) in torch; "
                "use --rounding gptq for this model"
            )
        names = []
        for value in node.inputs:
            if value is not None and value.name not in self._constants and not (
                value.name in weights or value.name in fake_quant
            ):
                array = constant_array(value)
                if array is not None:
                    buffer = f"constant_{len(self._constants)}"
                    self.register_buffer(buffer, torch.from_numpy(np.array(array)))
                    self._constants[value.name] = buffer
            names.append(None if value is None else value.name)
        op = _OPS[node.op_type]
        attributes = {key: attr.value for key, attr in node.attributes.items()}
        return (lambda *args, _op=op, _a=attributes: _op(*args, **_a)), names, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {name: getattr(self, buffer) for name, buffer in self._constants.items()}
        values[self.input] = x
        for (op, names, out), dead in zip(self._steps, self._last_reads):
            values[out] = op(*(None if name is None else values[name] for name in names))
            for name in dead:  # freed as soon as no later step reads them
                del values[name]
        return values[self.output]


def _supplied_initializers(nodes: list[ir.Node], weights: Mapping[str, torch.nn.Module]
                           ) -> list[str]:
    """The values in ``weights`` that ``nodes`` read and no node computes (learned biases)."""
    names = [value.name for node in nodes for value in node.inputs
             if value is not None and value.name in weights and value.producer() is None]
    return list(dict.fromkeys(names))


def _supplied_step(learned: torch.nn.ModuleDict, name: str) -> tuple[Op, list[str | None], str]:
    return _call(learned[_key(name)]), [], name


def _last_reads(steps: list[tuple[Op, list[str | None], str]], output: str) -> list[list[str]]:
    """Per step, the values it reads that no later step reads (``output`` excepted)."""
    last: dict[str, int] = {}
    for index, (_, names, _) in enumerate(steps):
        for name in names:
            if name is not None:
                last[name] = index
    dead: list[list[str]] = [[] for _ in steps]
    for name, index in last.items():
        if name != output:
            dead[index].append(name)
    return dead


def _key(name: str) -> str:
    """A ModuleDict key for a tensor name (dots are not allowed there)."""
    return name.replace(".", "·")


def _call(module: torch.nn.Module) -> Op:
    return lambda *args: module(*args)


def _nodes_between(graph: ir.Graph, input: str, output: str, supplied: set[str]) -> list[ir.Node]:
    """The non-constant nodes that compute ``output`` from ``input``, in graph order; a node
    whose output is ``supplied`` is taken as is (its own inputs are not followed)."""
    needed: set[int] = set()
    value = values_by_name(graph).get(output)
    if value is None or value.producer() is None:
        raise OnnxqError(f"no node computes {output}")
    stack = [value.producer()]
    while stack:
        node = stack.pop()
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        if node.outputs[0].name in supplied:
            quantize = quantize_of(node)
            if quantize is not None and quantize.inputs[0].name != input:
                stack.append(quantize.inputs[0].producer())
            continue
        for value in node.inputs:
            if value is None or value.name == input:
                continue
            if value.name in supplied and value.producer() is None:
                continue  # a supplied initializer
            if value.name not in supplied and constant_array(value) is not None:
                continue
            if value.producer() is None:
                raise OnnxqError(f"block from {input} to {output} reads the graph input "
                                 f"{value.name}")
            stack.append(value.producer())
    return [node for node in graph if id(node) in needed]


def quantize_of(dequantize: ir.Node) -> ir.Node | None:
    """The QuantizeLinear whose codes ``dequantize`` reads, directly or through the Clip that
    narrows them (features under 8 bits); None for constant codes."""
    if dequantize.op_type != "DequantizeLinear":
        return None
    producer = dequantize.inputs[0].producer()
    if producer is not None and producer.op_type == "Clip":
        producer = producer.inputs[0].producer()
    return producer if producer is not None and producer.op_type == "QuantizeLinear" else None


# --- the ops --------------------------------------------------------------------------------


def _pair(values, default: int) -> tuple[int, int]:
    return tuple(values) if values else (default, default)


def _padded(x: torch.Tensor, pads, value: float = 0.0) -> tuple[torch.Tensor, tuple[int, int]]:
    """``x`` with ONNX ``pads`` ``[top, left, bottom, right]`` applied: symmetric pads are
    returned for the op to apply, asymmetric ones applied here."""
    if not pads:
        return x, (0, 0)
    top, left, bottom, right = pads
    if (top, left) == (bottom, right):
        return x, (top, left)
    return F.pad(x, (left, right, top, bottom), value=value), (0, 0)


def _no_auto_pad(auto_pad: str) -> None:
    if auto_pad not in ("NOTSET", "VALID"):
        raise OnnxqError(f"reconstruction does not run auto_pad={auto_pad}")


def _conv(x, w, b=None, *, group=1, strides=None, pads=None, dilations=None, auto_pad="NOTSET",
          kernel_shape=None):
    _no_auto_pad(auto_pad)
    if w.dim() != 4:
        raise OnnxqError("reconstruction runs 2-D convolutions only")
    x, padding = _padded(x, pads)
    return F.conv2d(x, w, b, _pair(strides, 1), padding, _pair(dilations, 1), group)


def _max_pool(x, *, kernel_shape, strides=None, pads=None, dilations=None, ceil_mode=0,
              auto_pad="NOTSET", storage_order=0):
    _no_auto_pad(auto_pad)
    x, padding = _padded(x, pads, value=-math.inf)
    return F.max_pool2d(x, kernel_shape, _pair(strides, 1), padding, _pair(dilations, 1),
                        bool(ceil_mode))


def _average_pool(x, *, kernel_shape, strides=None, pads=None, ceil_mode=0,
                  count_include_pad=0, auto_pad="NOTSET", dilations=None):
    """ONNX AveragePool. Asymmetric pads are applied as zeros first; unless they count, each
    window's sum is then divided by its number of real elements (the same pool of ones)."""
    _no_auto_pad(auto_pad)
    strides = _pair(strides, 1)
    padded, padding = _padded(x, pads)
    if padded is x:  # no pads, or symmetric ones that torch applies
        return F.avg_pool2d(x, kernel_shape, strides, padding, bool(ceil_mode),
                            bool(count_include_pad))
    pooled = F.avg_pool2d(padded, kernel_shape, strides, 0, bool(ceil_mode), True)
    if count_include_pad:
        return pooled
    real = _padded(torch.ones_like(x[:1, :1]), pads)[0]
    return pooled / F.avg_pool2d(real, kernel_shape, strides, 0, bool(ceil_mode), True)


def _gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    y = alpha * (a.T if transA else a) @ (b.T if transB else b)
    return y if c is None else y + beta * c


def _reshape(x, shape, *, allowzero=0):
    """ONNX Reshape; a fixed leading size other than ``x``'s is taken to be the batch, so blocks
    run on batches of any size: a shape that holds one image of ``x`` per leading index, or a
    leading 1 beside a -1 (``[1, -1]``, a model exported for batch 1)."""
    dims = [int(d) for d in shape]
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    if dims and dims[0] not in (-1, x.shape[0]) and x.shape[0] > 0:
        known = x.shape[0] * math.prod(d for d in dims[1:] if d != -1)
        if -1 not in dims[1:]:
            fits = x.numel() == known
        else:
            fits = dims[0] == 1 and known > 0 and x.numel() % known == 0
        if fits:
            dims[0] = x.shape[0]
    return x.reshape(dims)


def _flatten(x, *, axis=1):
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _reduce_mean(x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
    if axes is None or len(axes) == 0:
        return x if noop_with_empty_axes else x.mean(keepdim=bool(keepdims))
    return x.mean([int(a) for a in axes], keepdim=bool(keepdims))


def _clip(x, low=None, high=None):
    return torch.clamp(x, None if low is None else float(low), None if high is None else float(high))


def _axes(x, axes) -> list[int]:
    return [int(a) + (x.dim() if int(a) < 0 else 0) for a in axes]


def _unsqueeze(x, axes):
    for axis in sorted(int(a) + (x.dim() + len(axes) if int(a) < 0 else 0) for a in axes):
        x = x.unsqueeze(axis)
    return x


def _squeeze(x, axes=None):
    if axes is None:
        return x.squeeze()
    for axis in sorted(_axes(x, axes), reverse=True):
        x = x.squeeze(axis)
    return x


def _pad(x, pads, constant_value=None, axes=None, *, mode="constant"):
    rank = x.dim()
    axes = _axes(x, axes) if axes is not None else list(range(rank))
    pads = [int(p) for p in pads]
    begin, end = dict(zip(axes, pads[: len(axes)])), dict(zip(axes, pads[len(axes):]))
    widths = []
    for axis in reversed(range(rank)):  # torch lists the last axis first
        widths += [begin.get(axis, 0), end.get(axis, 0)]
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
    value = float(constant_value) if constant_value is not None and mode == "constant" else None
    return F.pad(x, widths, torch_mode, value)


def _layer_norm(x, scale, bias=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    axis = axis + x.dim() if axis < 0 else axis
    return F.layer_norm(x, x.shape[axis:], scale, bias, epsilon)


def _gelu(x, *, approximate="none"):
    return F.gelu(x, approximate=approximate)


def _lrn(x, *, size, alpha=1e-4, beta=0.75, bias=1.0):
    return F.local_response_norm(x, size, alpha, beta, bias)


def _sum(*xs):
    return _fold(torch.add, xs)


def _fold(op, xs):
    total = xs[0]
    for x in xs[1:]:
        total = op(total, x)
    return total


def _constant(**attribute):
    """ONNX Constant: ``value`` (a tensor) or one of ``value_float(s)``/``value_int(s)``."""
    (kind, value), = attribute.items()
    if kind == "value":
        return torch.from_numpy(np.array(value.numpy()))
    dtype = torch.int64 if "int" in kind else torch.float32
    return torch.tensor(value, dtype=dtype)


_OPS: dict[str, Op] = {
    "Constant": _constant,
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": lambda a, b: a @ b,
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a / b,
    "Sum": _sum,
    "Pow": lambda a, b: torch.pow(a, b),
    "Sqrt": lambda x: torch.sqrt(x),
    "Reciprocal": lambda x: torch.reciprocal(x),
    "Neg": lambda x: -x,
    "Exp": lambda x: torch.exp(x),
    "Erf": lambda x: torch.erf(x),
    "Gelu": _gelu,
    "Max": lambda *xs: _fold(torch.maximum, xs),
    "Min": lambda *xs: _fold(torch.minimum, xs),
    "LayerNormalization": _layer_norm,
    "Relu": lambda x: torch.relu(x),
    "LeakyRelu": lambda x, alpha=0.01: F.leaky_relu(x, alpha),
    "PRelu": lambda x, slope: torch.where(x >= 0, x, x * slope),
    "Clip": _clip,
    "Sigmoid": lambda x: torch.sigmoid(x),
    "Tanh": lambda x: torch.tanh(x),
    "HardSigmoid": lambda x, alpha=0.2, beta=0.5: torch.clamp(alpha * x + beta, 0, 1),
    "HardSwish": lambda x: F.hardswish(x),
    "Softmax": lambda x, axis=-1: torch.softmax(x, axis),
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": lambda x: x.mean((2, 3), keepdim=True),
    "GlobalMaxPool": lambda x: x.amax((2, 3), keepdim=True),
    "ReduceMean": _reduce_mean,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda x, perm=None: x.permute(*(perm or reversed(range(x.dim())))),
    "Concat": lambda *xs, axis: torch.cat(xs, axis),
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Identity": lambda x: x,
    "LRN": _lrn,
    "Pad": _pad,
}
