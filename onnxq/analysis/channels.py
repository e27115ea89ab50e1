"""Channel analysis: the sets of tensors of a CNN graph that share one channel index space.

A channel set starts at its *producers* (the output channels of Conv, Gemm and MatMul weights,
with their bias), flows through ops that leave every channel where it is (Relu, Clip, pooling,
Pad, a Flatten or Reshape from ``[N, C, 1, 1]`` to ``[N, C]``, an Add of two members, which ties
residual branches into one set, ...) and ends at its *consumers* (the input channels of Conv,
Gemm and MatMul weights). Scaling channel ``j`` of a set by ``1/s_j`` in its producers and by
``s_j`` in its consumers, or permuting its channels in both, leaves the function of the graph
unchanged, provided every op in between commutes with it: that is what the smooth and reorder
passes rely on.

A Concat along channels lays several sets side by side in one tensor; its consumers see each set
at an offset. A depthwise Conv consumes one set and produces another with the same channel
order; the two are *linked* and share one permutation. A set touching the graph input or output,
or read by an op this module does not know, is *blocked* and left alone; the reasons are kept.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from onnxq.analysis.graph import is_depthwise
from onnxq.base.constants import WEIGHT_OPS

#: Ops that keep channels in place and commute with a positive per-channel scale.
HOMOGENEOUS_OPS = frozenset(
    {"Relu", "LeakyRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
     "Identity", "Dropout"}
)
#: Elementwise ops that keep channels in place but do not commute with scaling.
ELEMENTWISE_OPS = frozenset(
    {"Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Softplus", "Gelu"}
)
REDUCE_OPS = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum"})
#: Ops that read only a tensor's shape.
SHAPE_OPS = frozenset({"Shape", "Size"})


@dataclasses.dataclass(frozen=True)
class Producer:
    """A node whose weight rows from ``offset`` along ``axis`` (and bias) make the set's channels."""

    node: str
    weight: str
    axis: int
    bias: str | None
    offset: int = 0


@dataclasses.dataclass(frozen=True)
class Consumer:
    """A node reading the set's channels at ``offset`` of its input ``tensor``.

    ``group`` is the Conv group count (1 for Gemm and MatMul); the weight's input channels lie
    along ``axis`` (for a Conv, input channel ``i`` of group ``g`` is column ``i % (C/group)`` of
    the rows of group ``g``).
    """

    node: str
    op_type: str
    tensor: str
    offset: int
    weight: str
    axis: int
    group: int = 1
    depthwise: bool = False


@dataclasses.dataclass(frozen=True)
class PassThrough:
    """A node the set's channels pass through unchanged in position.

    ``homogeneous``: it commutes with a positive per-channel scale. ``params`` are constant
    inputs with one entry per channel (from ``offset``), which a permutation must follow.
    """

    node: str
    op_type: str
    homogeneous: bool
    offset: int = 0
    params: tuple[str, ...] = ()


@dataclasses.dataclass
class ChannelSet:
    """Tensors sharing one channel index space, and the nodes that make, move and read it."""

    name: str
    channels: int
    tensors: list[str] = dataclasses.field(default_factory=list)
    producers: list[Producer] = dataclasses.field(default_factory=list)
    passes: list[PassThrough] = dataclasses.field(default_factory=list)
    consumers: list[Consumer] = dataclasses.field(default_factory=list)
    blocked: list[str] = dataclasses.field(default_factory=list)
    not_scalable: list[str] = dataclasses.field(default_factory=list)
    not_permutable: list[str] = dataclasses.field(default_factory=list)

    @property
    def smooth_blockers(self) -> list[str]:
        """Why a scale cannot be folded into the producers (empty when it can)."""
        reasons = list(self.blocked) + list(self.not_scalable)
        if not self.producers and not self.blocked:
            reasons.append("no producer to fold a scale into")
        if not self.consumers:
            reasons.append("no consumer")
        return reasons

    @property
    def mul_blockers(self) -> list[str]:
        """Why even an explicit per-channel Mul before the consumers is impossible."""
        return list(self.blocked) + ([] if self.consumers else ["no consumer"])

    @property
    def permute_blockers(self) -> list[str]:
        return list(self.blocked) + list(self.not_permutable)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "channels": self.channels,
            "tensors": list(self.tensors),
            "producers": [p.node for p in self.producers],
            "pass_through": [p.node for p in self.passes],
            "consumers": [c.node for c in self.consumers],
        }


@dataclasses.dataclass
class ChannelAnalysis:
    """The channel sets of a graph and the depthwise links between them."""

    sets: list[ChannelSet]
    links: list[tuple[int, int]]  # (set index, set index) joined by a depthwise Conv

    def domains(self) -> list[list[int]]:
        """Groups of set indices that must share one permutation (linked by depthwise Convs)."""
        parent = list(range(len(self.sets)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for a, b in self.links:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        groups: dict[int, list[int]] = {}
        for index in range(len(self.sets)):
            groups.setdefault(find(index), []).append(index)
        return list(groups.values())


def analyze(model: ir.Model) -> ChannelAnalysis:
    """Find the channel sets of ``model``'s main graph (topologically sorted)."""
    return _Analyzer(model.graph, inferred_shapes(model)).run()


# ---------------------------------------------------------------------------------------------
# Weight layout helpers shared by the passes


def conv_input_index(weight_shape: Sequence[int], group: int) -> np.ndarray:
    """``[O, C/group]``: the input channel that each (row, column) of a Conv weight reads."""
    rows, columns = weight_shape[0], weight_shape[1]
    group_of_row = np.arange(rows) // (rows // group)
    return group_of_row[:, None] * columns + np.arange(columns)[None, :]


def input_channel_factor(consumer: Consumer, weight: np.ndarray, full: np.ndarray) -> np.ndarray:
    """A factor broadcastable to ``weight`` that multiplies input channel ``i`` by ``full[i]``."""
    if consumer.op_type == "Conv":
        factor = full[conv_input_index(weight.shape, consumer.group)]
        return factor.reshape(factor.shape + (1,) * (weight.ndim - 2))
    return full[:, None] if consumer.axis == 0 else full[None, :]


def input_channel_absmax(consumer: Consumer, weight: np.ndarray) -> np.ndarray:
    """Per input channel of the consumer: the largest ``|w|`` of the weights multiplying it."""
    return input_channel_max(consumer, np.abs(weight))


def input_channel_max(consumer: Consumer, weight: np.ndarray) -> np.ndarray:
    """Per input channel of the consumer: the largest ``w`` of the weights multiplying it."""
    if consumer.op_type != "Conv":
        return weight.max(axis=1 - consumer.axis)
    per_column = weight.reshape(weight.shape[0], weight.shape[1], -1).max(axis=2)
    result = np.full(consumer_input_channels(consumer, weight), -np.inf, dtype=weight.dtype)
    index = conv_input_index(weight.shape, consumer.group)
    np.maximum.at(result, index.ravel(), per_column.ravel())
    return result


def consumer_input_channels(consumer: Consumer, weight: np.ndarray) -> int:
    if consumer.op_type == "Conv":
        return weight.shape[1] * consumer.group
    return weight.shape[consumer.axis]


# ---------------------------------------------------------------------------------------------
# The analysis


@dataclasses.dataclass
class _Space:
    width: int
    events: list[tuple[int, str, object]] = dataclasses.field(default_factory=list)


class _Analyzer:
    """Walks the graph once, giving each tensor a *view*: the spaces along its channel axis."""

    def __init__(self, graph: ir.Graph, shapes: dict[str, tuple[int | None, ...]]) -> None:
        self.graph = graph
        self.shapes = shapes
        self.spaces: list[_Space] = []
        self.parent: list[int] = []
        self.views: dict[str, tuple[int, ...]] = {}
        self.links: list[tuple[int, int]] = []
        self.step = 0

    # -- union-find over spaces ---------------------------------------------------------------

    def new_space(self, width: int) -> int:
        self.spaces.append(_Space(width))
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def note(self, space: int, kind: str, item: object) -> None:
        self.step += 1
        self.spaces[space].events.append((self.step, kind, item))

    def block(self, view: Iterable[int], reason: str) -> None:
        for space in view:
            self.note(space, "blocked", reason)

    # -- shapes and views ----------------------------------------------------------------------

    def shape(self, value: ir.Value | None) -> tuple[int | None, ...] | None:
        if value is None:
            return None
        if value.const_value is not None:
            return tuple(value.const_value.shape)
        return self.shapes.get(value.name)

    def rank(self, value: ir.Value | None) -> int | None:
        shape = self.shape(value)
        return None if shape is None else len(shape)

    def view(self, value: ir.Value | None) -> tuple[int, ...] | None:
        return None if value is None else self.views.get(value.name)

    def width(self, view: tuple[int, ...]) -> int:
        return sum(self.spaces[s].width for s in view)

    def segments(self, view: tuple[int, ...]) -> list[tuple[int, int]]:
        """``(space, offset)`` of each segment of a view."""
        result, offset = [], 0
        for space in view:
            result.append((space, offset))
            offset += self.spaces[space].width
        return result

    def set_view(self, value: ir.Value, view: tuple[int, ...]) -> None:
        self.views[value.name] = view
        for space, offset in self.segments(view):
            end = offset + self.spaces[space].width
            label = value.name if len(view) == 1 else f"{value.name}[{offset}:{end}]"
            self.note(space, "tensor", label)

    # -- walk ----------------------------------------------------------------------------------

    def run(self) -> ChannelAnalysis:
        for value in self.graph.inputs:
            shape = self.shape(value)
            if shape is not None and len(shape) >= 2 and shape[1]:
                space = self.new_space(shape[1])
                self.set_view(value, (space,))
                self.block((space,), f"graph input {value.name}")
        for node in self.graph:
            self.visit(node)
        for value in self.graph.outputs:
            view = self.view(value)
            if view is not None:
                self.block(view, f"graph output {value.name}")
        return self.collect()

    def visit(self, node: ir.Node) -> None:
        op = node.op_type
        members = [v for v in node.inputs if self.view(v) is not None]
        if node.domain not in ("", "ai.onnx"):
            self.unknown(node, members)
        elif op in WEIGHT_OPS:
            self.weighted(node)
        elif not members or op in SHAPE_OPS:
            return
        elif any(output.uses() or output.is_graph_output() for output in node.outputs[1:]):
            self.unknown(node, members)  # e.g. MaxPool indices depend on channel order
        elif op in HOMOGENEOUS_OPS or op in ELEMENTWISE_OPS:
            self.pass_through(node, self.views[node.inputs[0].name], op in HOMOGENEOUS_OPS)
        elif op == "Clip":
            self.clip(node)
        elif op in REDUCE_OPS:
            self.reduce(node)
        elif op in ("Flatten", "Reshape"):
            self.to_matrix(node)
        elif op == "Pad":
            self.pad(node)
        elif op == "Concat":
            self.concat(node)
        elif op in ("Add", "Sub", "Mul", "Div"):
            self.binary(node)
        else:
            self.unknown(node, members)

    def unknown(self, node: ir.Node, members: list[ir.Value]) -> None:
        for value in members:
            self.block(self.views[value.name], f"read by unsupported {node.op_type} {node.name}")

    def pass_through(
        self, node: ir.Node, view: tuple[int, ...], homogeneous: bool, params: tuple[str, ...] = ()
    ) -> None:
        for space, offset in self.segments(view):
            passing = PassThrough(node.name, node.op_type, homogeneous, offset, params)
            self.note(space, "pass", passing)
        self.set_view(node.outputs[0], view)

    def clip(self, node: ir.Node) -> None:
        x, lo, hi = (list(node.inputs) + [None, None])[:3]
        if any(v is not None and v.const_value is None for v in (lo, hi)):
            self.unknown(node, [x])
            return
        lo_value = None if lo is None else float(lo.const_value.numpy())
        hi_value = None if hi is None else float(hi.const_value.numpy())
        homogeneous = lo_value in (None, 0.0, -math.inf) and hi_value in (None, 0.0, math.inf)
        self.pass_through(node, self.views[x.name], homogeneous)

    def reduce(self, node: ir.Node) -> None:
        x = node.inputs[0]
        rank = self.rank(x)
        axes = _constant_ints(node.inputs[1]) if len(node.inputs) > 1 else None
        if axes is None and "axes" in node.attributes:
            axes = list(node.attributes.get_ints("axes"))
        if rank is None or not axes or any(a % rank < 2 for a in axes):
            self.block(self.views[x.name], f"{node.op_type} {node.name} reduces over channels")
            return
        self.pass_through(node, self.views[x.name], True)

    def to_matrix(self, node: ir.Node) -> None:
        """Flatten/Reshape from ``[N, C, 1, ...]`` to ``[N, C]`` keeps channels on axis 1."""
        x = node.inputs[0]
        view = self.views[x.name]
        shape = self.shape(x)
        spatial_ones = shape is not None and all(d == 1 for d in shape[2:])
        if node.op_type == "Flatten":
            keeps = spatial_ones and node.attributes.get_int("axis", 1) % len(shape) == 1
        else:
            target = _constant_ints(node.inputs[1])
            keeps = (
                spatial_ones and target is not None and len(target) >= 2
                and target[1] == self.width(view) and all(d == 1 for d in target[2:])
            )
        if not keeps:
            self.block(view, f"{node.op_type} {node.name} mixes channels with other axes")
            return
        self.pass_through(node, view, True)

    def pad(self, node: ir.Node) -> None:
        x, pads_value, value, axes_value = (list(node.inputs) + [None, None, None])[:4]
        pads = _constant_ints(pads_value)
        rank = self.rank(x)
        if pads is None or rank is None or (value is not None and value.const_value is None):
            self.unknown(node, [x])
            return
        axes = [a % rank for a in _constant_ints(axes_value) or range(rank)]
        padded = {a for i, a in enumerate(axes) if pads[i] or pads[i + len(axes)]}
        if padded & {0, 1}:
            self.block(self.views[x.name], f"Pad {node.name} pads the channel axis")
            return
        zero = value is None or not np.any(value.const_value.numpy())
        homogeneous = node.attributes.get_string("mode", "constant") != "constant" or zero
        self.pass_through(node, self.views[x.name], homogeneous)

    def concat(self, node: ir.Node) -> None:
        views = [self.view(v) for v in node.inputs]
        rank = self.rank(node.inputs[0])
        if any(v is None for v in views) or rank is None:
            reason = f"Concat {node.name} joins a tensor outside any channel set"
            for view in views:
                if view is not None:
                    self.block(view, reason)
            return
        if node.attributes.get_int("axis") % rank != 1:
            self.same_channels(node, views, homogeneous=True)
            return
        self.pass_through(node, tuple(s for view in views for s in view), True)

    def binary(self, node: ir.Node) -> None:
        a, b = node.inputs[0], node.inputs[1]
        view_a, view_b = self.view(a), self.view(b)
        op = node.op_type
        if view_a is not None and view_b is not None:
            if self.rank(a) is None or self.rank(a) != self.rank(b):
                self.block(view_a + view_b, f"{op} {node.name} broadcasts across channels")
            else:
                self.same_channels(node, [view_a, view_b], homogeneous=op in ("Add", "Sub"))
            return
        member, other = (a, b) if view_a is not None else (b, a)
        params = self.channel_constant(other, member)
        if params is None:
            self.unknown(node, [member])
            return
        homogeneous = op == "Mul" or (op == "Div" and member is a)
        self.pass_through(node, self.views[member.name], homogeneous, params)

    def channel_constant(self, constant: ir.Value, member: ir.Value) -> tuple[str, ...] | None:
        """``()`` for a scalar constant, ``(name,)`` for one value per channel, else None."""
        if constant.const_value is None:
            return None
        shape = list(constant.const_value.shape)
        rank = self.rank(member)
        if all(d == 1 for d in shape):
            return ()
        if rank is None or len(shape) > rank:
            return None
        padded = [1] * (rank - len(shape)) + shape
        channels = self.width(self.views[member.name])
        if padded[1] == channels and all(d == 1 for i, d in enumerate(padded) if i != 1):
            return (constant.name,)
        return None

    def same_channels(self, node: ir.Node, views: list[tuple[int, ...]], homogeneous: bool) -> None:
        """Elementwise over inputs whose channels coincide: their spaces become one."""
        widths = [[self.spaces[s].width for s in view] for view in views]
        if any(w != widths[0] for w in widths):
            joined = tuple(s for view in views for s in view)
            self.block(joined, f"{node.op_type} {node.name} joins different channel layouts")
            return
        for view in views[1:]:
            for a, b in zip(views[0], view):
                self.union(a, b)
        self.pass_through(node, views[0], homogeneous)

    def weighted(self, node: ir.Node) -> None:
        layout = _weight_layout(node)
        x = node.inputs[0]
        view = self.view(x)
        if isinstance(layout, str):
            if view is not None:
                self.block(view, f"{node.op_type} {node.name}: {layout}")
            return
        in_axis, out_axis, group = layout
        weight = node.inputs[1]
        bias = node.inputs[2] if node.op_type != "MatMul" and len(node.inputs) > 2 else None
        shared = _shared_constants(weight, bias)
        depthwise = is_depthwise(node)
        if view is not None:
            self.consume(node, view, in_axis, group, depthwise, shared)
        rows = weight.shape[out_axis]
        bias_name = bias.name if bias is not None else None
        if depthwise and view is not None and rows == self.width(view):
            outputs = []
            for space, offset in self.segments(view):
                created = self.new_space(self.spaces[space].width)
                self.links.append((space, created))
                producer = Producer(node.name, weight.name, out_axis, bias_name, offset)
                self.note(created, "producer", producer)
                outputs.append(created)
        else:
            outputs = [self.new_space(rows)]
            self.note(outputs[0], "producer", Producer(node.name, weight.name, out_axis, bias_name))
            if group > 1:
                self.note(outputs[0], "not_permutable", f"output of grouped Conv {node.name}")
        self.set_view(node.outputs[0], tuple(outputs))
        if shared:
            self.block(outputs, shared)

    def consume(
        self, node: ir.Node, view: tuple[int, ...], in_axis: int, group: int, depthwise: bool,
        shared: str | None,
    ) -> None:
        x, weight = node.inputs[0], node.inputs[1]
        is_conv = node.op_type == "Conv"
        expected = weight.shape[1] * group if is_conv else weight.shape[in_axis]
        if self.width(view) != expected or (not is_conv and self.rank(x) != 2):
            self.block(view, f"{node.op_type} {node.name} does not read channels on axis 1")
            return
        for space, offset in self.segments(view):
            consumer = Consumer(
                node.name, node.op_type, x.name, offset, weight.name, in_axis, group, depthwise
            )
            self.note(space, "consumer", consumer)
            if group > 1 and not (depthwise and weight.shape[0] == group):
                self.note(space, "not_permutable", f"read by grouped Conv {node.name}")
        if shared:
            self.block(view, shared)

    # -- result --------------------------------------------------------------------------------

    def collect(self) -> ChannelAnalysis:
        roots = sorted({self.find(i) for i in range(len(self.spaces))})
        index_of = {root: i for i, root in enumerate(roots)}
        events: list[list[tuple[int, str, object]]] = [[] for _ in roots]
        for space_index, space in enumerate(self.spaces):
            events[index_of[self.find(space_index)]].extend(space.events)
        sets = [
            _build_set(self.spaces[root].width, sorted(found, key=lambda event: event[0]))
            for root, found in zip(roots, events)
        ]
        links = sorted({(index_of[self.find(a)], index_of[self.find(b)]) for a, b in self.links})
        return ChannelAnalysis(sets, links)


def _build_set(channels: int, events: list[tuple[int, str, object]]) -> ChannelSet:
    channel_set = ChannelSet(name="", channels=channels)
    lists = {
        "tensor": channel_set.tensors,
        "producer": channel_set.producers,
        "pass": channel_set.passes,
        "consumer": channel_set.consumers,
        "blocked": channel_set.blocked,
        "not_permutable": channel_set.not_permutable,
    }
    for _, kind, item in events:
        if item not in lists[kind]:
            lists[kind].append(item)
    channel_set.name = channel_set.tensors[0] if channel_set.tensors else "(unnamed)"
    channel_set.not_scalable = [
        f"{p.op_type} {p.node} does not commute with scaling"
        for p in channel_set.passes
        if not p.homogeneous
    ]
    return channel_set


def _weight_layout(node: ir.Node) -> tuple[int, int, int] | str:
    """``(input-channel axis, output-channel axis, group)`` of a node's weight, or why not."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if weight is None or weight.const_value is None or not weight.is_initializer():
        return "its weight is not a constant"
    if weight.dtype != ir.DataType.FLOAT:
        return "its weight is not float32"
    if bias is not None and (bias.const_value is None or not bias.is_initializer()):
        return "its bias is not a constant"
    rank = len(weight.const_value.shape)
    if node.op_type == "Conv":
        if rank < 3:
            return f"its weight has rank {rank}"
        return 1, 0, node.attributes.get_int("group", 1)
    if rank != 2:
        return f"its weight has rank {rank}"
    if node.op_type == "MatMul":
        return 0, 1, 1
    if node.attributes.get_int("transA", 0):
        return "transA=1"
    out_axis = 0 if node.attributes.get_int("transB", 0) else 1
    if bias is not None and bias.const_value.size not in (1, weight.const_value.shape[out_axis]):
        return "its bias is not one value per output"
    return 1 - out_axis, out_axis, 1


def _shared_constants(*values: ir.Value | None) -> str | None:
    for value in values:
        if value is not None and len({use.node.name for use in value.uses()}) > 1:
            return f"{value.name} is shared with other nodes"
    return None


def _constant_ints(value: ir.Value | None) -> list[int] | None:
    if value is None or value.const_value is None:
        return None
    return [int(v) for v in value.const_value.numpy().reshape(-1)]


def inferred_shapes(model: ir.Model) -> dict[str, tuple[int | None, ...]]:
    """Every value's shape by ONNX shape inference on a serialized copy (symbolic dims: None)."""
    proto = onnx.shape_inference.infer_shapes(ir.serde.serialize_model(model), data_prop=True)
    shapes = {}
    graph = proto.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[info.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
            )
    return shapes
