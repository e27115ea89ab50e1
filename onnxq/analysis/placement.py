"""Where feature Q/DQ pairs go in the graph.

``inputs`` (the default, the semantics of the research tables): one Q/DQ on each feature input
of the quantized op types (``--ops``), read only by those ops; every other reader keeps the float
tensor.

``fused`` (deployment on ONNX Runtime): the QDQ layout that ONNX Runtime turns into integer
kernels (QLinearConv, QGemm, QLinearAdd, ...). Every feature input *and output* of an op with an
integer kernel is quantized once and all its readers take the dequantized copy, so each such op
sits between DequantizeLinear inputs and a QuantizeLinear output. An output whose only reader is
a Relu or Clip is quantized after that activation instead; ONNX Runtime folds the activation into
the quantized range (its lower end is 0 for affine features). Graph outputs stay float.

``auto`` (``QuantConfig.resolved``) picks ``fused`` for W8A8, the configuration that deploys as
int8 kernels, and ``inputs`` for everything else, and for every graph with transformer ops
(``TRANSFORMER_OPS``: LayerNormalization, Softmax, GELU or its Erf form): there one per-tensor
8-bit range on each residual-stream, attention and GELU tensor costs too much (ViT-B/16: logit
cosine with fp32 0.84 on the worst image, against 0.9988 with ``inputs``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable

import onnx_ir as ir

from onnxq.base.constants import WEIGHT_OPS

#: Activations that ONNX Runtime folds into the QuantizeLinear that follows them.
FOLDED_ACTIVATIONS = ("Relu", "Clip")
#: Ops that mark a transformer-style graph (``auto`` placement: ``inputs``).
TRANSFORMER_OPS = frozenset({"LayerNormalization", "Softmax", "Gelu", "Erf"})


def has_transformer_ops(graph: ir.Graph) -> bool:
    """Whether ``graph`` has one of the ``TRANSFORMER_OPS`` (a Softmax that writes the graph's
    output, reshaped or not, is a classifier's, not attention)."""
    return any(
        node.op_type in TRANSFORMER_OPS
        and not (node.op_type == "Softmax" and _is_graph_output(node.outputs[0]))
        for node in graph
    )


def _is_graph_output(value: ir.Value) -> bool:
    """``value`` is a graph output, or only reshaped on its way to one."""
    while not value.is_graph_output():
        readers = list(value.consumers())
        if len(readers) != 1 or readers[0].op_type not in ("Reshape", "Flatten", "Squeeze"):
            return False
        value = readers[0].outputs[0]
    return True


@dataclasses.dataclass(frozen=True)
class PlacedFeature:
    """A feature tensor to quantize, its readers, and the quantized nodes it touches."""

    tensor: str
    consumers: tuple[str, ...]
    touches: tuple[str, ...]  # the quantized nodes that read or write it


def fused_features(graph: ir.Graph, ops: Collection[str]) -> list[PlacedFeature]:
    """The tensors of the ``fused`` placement for the op types ``ops``, in graph order."""
    touching: dict[str, list[str]] = {}
    values: dict[str, ir.Value] = {}
    for node in graph:
        if node.op_type not in ops:
            continue
        for value in _feature_inputs(node):
            _note(values, touching, value, node)
        for value in node.outputs:
            if _is_float(value):
                _note(values, touching, _after_folded_activation(value), node)
    return [
        PlacedFeature(name, _readers(value), tuple(dict.fromkeys(touching[name])))
        for name, value in values.items()
        if not value.is_graph_output() and value.uses()
    ]


def runs_as_integer_kernel(node: ir.Node) -> bool:
    """Whether ``node`` reads a dequantized input and only feeds QuantizeLinear (after Relu/Clip).

    That is the pattern ONNX Runtime fuses into an integer kernel when the weight, too, comes
    from a plain int8 DequantizeLinear.
    """
    source = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    if source is None or source.op_type != "DequantizeLinear":
        return False
    output = _after_folded_activation(node.outputs[0])
    readers = list(output.consumers())
    return (
        bool(readers)
        and not output.is_graph_output()
        and all(reader.op_type == "QuantizeLinear" for reader in readers)
    )


def _note(
    values: dict[str, ir.Value], touching: dict[str, list[str]], value: ir.Value, node: ir.Node
) -> None:
    values.setdefault(value.name, value)
    touching.setdefault(value.name, []).append(node.name)


def _after_folded_activation(value: ir.Value) -> ir.Value:
    """``value``, or the output of the Relu/Clip that is its only reader."""
    readers = list(value.consumers())
    if len(readers) == 1 and readers[0].op_type in FOLDED_ACTIVATIONS and not value.is_graph_output():
        return readers[0].outputs[0]
    return value


def _readers(value: ir.Value) -> tuple[str, ...]:
    return tuple(dict.fromkeys(node.name for node in value.consumers()))


def _feature_inputs(node: ir.Node) -> Iterable[ir.Value]:
    """The non-constant float inputs of ``node`` (only the data input of a weighted op)."""
    candidates = node.inputs[:1] if node.op_type in WEIGHT_OPS else node.inputs
    return [
        value
        for value in candidates
        if value is not None and value.const_value is None and _is_float(value)
    ]


def _is_float(value: ir.Value) -> bool:
    return value.dtype is None or value.dtype == ir.DataType.FLOAT
