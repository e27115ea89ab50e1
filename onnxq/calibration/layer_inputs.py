"""Second-order statistics of what a weight layer sees: ``H = Σ x xᵀ`` and ``Σ x`` per input patch.

A layer computes ``y = W x`` for every output position, where ``x`` is one column of its input
unrolled the way its weight is flattened: for a Conv weight ``[O, I/g, kh, kw]`` viewed as
``[O, I/g·kh·kw]``, ``x`` is the ``(I/g)·kh·kw`` patch under the kernel (zero padding included);
for Gemm/MatMul it is one row of the ``[N, K]`` input. ``InputStatistics`` streams batches of a
layer's input and keeps, per Conv group, the patch Gram matrix and the patch sum, so the output
error of any weight change ``ΔW`` is ``tr(ΔW H ΔWᵀ)`` and the mean output shift is ``ΔW E[x]``.
Memory is ``groups × D²`` whatever the number of images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from numpy.lib.stride_tricks import sliding_window_view

from onnxq.analysis.plan import WeightTarget
from onnxq.base.errors import OnnxqError
from onnxq.calibration import streaming
from onnxq.io.data import ImageSet
from onnxq.io.preprocessing import Preprocessing

# Patch values unrolled per chunk (bounds the im2col temporary to ~64 MiB of float32).
_CHUNK_VALUES = 1 << 24


@dataclasses.dataclass(frozen=True)
class LayerGeometry:
    """How a layer unrolls its input into the columns its weight multiplies."""

    kernel: tuple[int, ...] = ()  # () for Gemm/MatMul
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()  # ONNX order: all begins, then all ends
    groups: int = 1
    auto_pad: str = "NOTSET"  # SAME_UPPER/SAME_LOWER: pads follow from the input size

    @property
    def pointwise(self) -> bool:
        """A 1×1 stride-1 unpadded Conv: every input position is one patch."""
        return (
            all(k == 1 for k in self.kernel)
            and all(s == 1 for s in self.strides)
            and not any(self.pads)
        )

    @classmethod
    def of(cls, node: ir.Node, weight_shape: tuple[int, ...]) -> LayerGeometry:
        """The geometry of a Conv, Gemm or MatMul node whose weight has ``weight_shape``."""
        if node.op_type != "Conv":
            return cls()
        attrs = node.attributes
        kernel = tuple(weight_shape[2:])
        rank = len(kernel)
        strides = tuple(attrs.get_ints("strides", [1] * rank))
        dilations = tuple(attrs.get_ints("dilations", [1] * rank))
        auto_pad = attrs.get_string("auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            raise OnnxqError(f"{node.name}: unknown Conv auto_pad {auto_pad!r}")
        pads = tuple(attrs.get_ints("pads", [0] * 2 * rank)) if auto_pad == "NOTSET" else (0,) * 2 * rank
        return cls(kernel, strides, dilations, pads, attrs.get_int("group", 1), auto_pad)

    def for_input(self, spatial: tuple[int, ...]) -> LayerGeometry:
        """This geometry with explicit pads for inputs of spatial size ``spatial``."""
        if not self.auto_pad.startswith("SAME"):
            return self
        begins, ends = [], []
        for size, k, s, d in zip(spatial, self.kernel, self.strides, self.dilations):
            total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
            small = total // 2
            begins.append(small if self.auto_pad == "SAME_UPPER" else total - small)
            ends.append(total - begins[-1])
        return dataclasses.replace(self, pads=tuple(begins + ends), auto_pad="NOTSET")


def patches(x: np.ndarray, geometry: LayerGeometry, positions: np.ndarray | None = None) -> np.ndarray:
    """Unroll a batch of layer inputs into ``[groups, D, columns]`` (explicit pads only).

    Conv: ``x [N, C, *spatial]`` → each group's ``(C/g)·∏kernel`` patch values at the output
    positions of every image, in the order of the weight's ``[O, C/g, *kernel]`` flattening;
    ``positions [N, k]`` (flat output indices per image) keeps only those, else all of them.
    Gemm/MatMul: ``x [..., K]`` → ``[1, K, rows]`` (``positions`` is ignored).
    """
    x = np.asarray(x, dtype=np.float32)
    if not geometry.kernel:
        return x.reshape(-1, x.shape[-1]).T[None]
    batch, channels = x.shape[:2]
    per_group = channels // geometry.groups
    if geometry.pointwise:
        flat = x.reshape(batch, channels, -1)
        if positions is not None:
            flat = np.take_along_axis(flat, positions[:, None, :], axis=2)
        flat = flat.reshape(batch, geometry.groups, per_group, -1)
        return flat.transpose(1, 2, 0, 3).reshape(geometry.groups, per_group, -1)
    windows = _windows(x, geometry)  # [N, C, *out, *kernel]
    rank = len(geometry.kernel)
    out_spatial = windows.shape[2 : 2 + rank]
    if positions is None:
        count = int(np.prod(out_spatial))
        positions = np.broadcast_to(np.arange(count), (batch, count))
    where = np.unravel_index(positions, out_spatial)
    picked = windows[(np.arange(batch)[:, None], slice(None)) + where]  # [N, k, C, *kernel]
    picked = picked.reshape(picked.shape[:2] + (geometry.groups, per_group) + geometry.kernel)
    order = (2, 3) + tuple(range(4, 4 + rank)) + (0, 1)
    depth = per_group * int(np.prod(geometry.kernel))
    return picked.transpose(order).reshape(geometry.groups, depth, -1)


def output_positions(x_shape: tuple[int, ...], geometry: LayerGeometry) -> int:
    """Output positions per image of a Conv (1 for Gemm/MatMul rows)."""
    if not geometry.kernel:
        return 1
    rank = len(geometry.kernel)
    count = 1
    for axis in range(rank):
        span = geometry.dilations[axis] * (geometry.kernel[axis] - 1) + 1
        padded = x_shape[2 + axis] + geometry.pads[axis] + geometry.pads[rank + axis]
        count *= (padded - span) // geometry.strides[axis] + 1
    return count


def _windows(x: np.ndarray, geometry: LayerGeometry) -> np.ndarray:
    """A strided ``[N, C, *out, *kernel]`` view of every kernel window of the padded input."""
    rank = len(geometry.kernel)
    widths = [(0, 0), (0, 0)] + list(zip(geometry.pads[:rank], geometry.pads[rank:]))
    padded = np.pad(x, widths)
    spans = [d * (k - 1) + 1 for k, d in zip(geometry.kernel, geometry.dilations)]
    windows = sliding_window_view(padded, spans, axis=tuple(range(2, 2 + rank)))
    positions = tuple(slice(None, None, s) for s in geometry.strides)
    taps = tuple(slice(None, None, d) for d in geometry.dilations)
    return windows[(slice(None), slice(None)) + positions + taps]


def patch_sums(x: np.ndarray, geometry: LayerGeometry) -> np.ndarray:
    """``Σ x`` over every patch of every image: ``[groups, D]`` float64.

    Each kernel tap sums one strided slice of the padded, batch-summed input.
    """
    x = np.asarray(x, dtype=np.float32)
    if not geometry.kernel:
        return x.reshape(-1, x.shape[-1]).sum(axis=0, dtype=np.float64)[None]
    rank = len(geometry.kernel)
    widths = [(0, 0)] + list(zip(geometry.pads[:rank], geometry.pads[rank:]))
    image = np.pad(x.sum(axis=0, dtype=np.float64), widths)
    out = [
        (image.shape[1 + a] - geometry.dilations[a] * (geometry.kernel[a] - 1) - 1)
        // geometry.strides[a] + 1
        for a in range(rank)
    ]
    sums = np.empty((x.shape[1],) + geometry.kernel)
    for tap in np.ndindex(*geometry.kernel):
        window = tuple(
            slice(t * d, t * d + s * (n - 1) + 1, s)
            for t, d, s, n in zip(tap, geometry.dilations, geometry.strides, out)
        )
        sums[(slice(None),) + tap] = image[(slice(None),) + window].sum(axis=tuple(range(1, 1 + rank)))
    return sums.reshape(geometry.groups, -1)


def positions_per_image(depth: int, images: int, samples_per_dim: int = 256) -> int:
    """How many output positions of each image feed ``H`` so that it sees ``samples_per_dim·D``."""
    return max(1, -(-samples_per_dim * depth // max(images, 1)))


class InputStatistics:
    """Streams one layer's input into ``Σ x xᵀ`` ``[g, D, D]`` and ``Σ x`` ``[g, D]``.

    ``Σ x`` is over every patch. ``Σ x xᵀ`` is over at most ``positions_per_image`` output
    positions of each image, drawn at random (seeded) when there are more: a ``D × D`` second
    moment needs a few hundred samples per dimension, not every pixel of every image.
    """

    def __init__(
        self, geometry: LayerGeometry, positions_per_image: int | None = None, seed: int = 0
    ) -> None:
        self.geometry = geometry
        self.positions_per_image = positions_per_image
        self.rng = np.random.default_rng(seed)
        self.gram: np.ndarray | None = None
        self.total: np.ndarray | None = None
        self.count = 0
        self._gram_columns = 0  # columns summed into ``gram``
        self._pending: list[np.ndarray] = []  # patch columns not yet in ``gram``
        self._pending_columns = 0

    def update(self, x: np.ndarray) -> None:
        """Fold one batch of the layer's input in, a few images at a time."""
        x = np.asarray(x, dtype=np.float32)
        geometry = self.geometry.for_input(x.shape[2:]) if self.geometry.kernel else self.geometry
        total = patch_sums(x, geometry)
        self.total = total if self.total is None else self.total + total
        if not geometry.kernel:
            self.count += x.size // x.shape[-1]
            self._add(patches(x, geometry))
            return
        positions = output_positions(x.shape, geometry)
        self.count += positions * len(x)
        chosen = self._choose(len(x), positions)
        kept = positions if chosen is None else chosen.shape[1]
        step = max(1, _CHUNK_VALUES // (kept * x.shape[1] * int(np.prod(geometry.kernel))))
        for start in range(0, len(x), step):
            part = None if chosen is None else chosen[start : start + step]
            self._add(patches(x[start : start + step], geometry, part))

    def _choose(self, images: int, positions: int) -> np.ndarray | None:
        """Per image, the sorted output positions that feed ``H`` (None: all of them)."""
        keep = self.positions_per_image
        if not self.geometry.kernel or keep is None or keep >= positions:
            return None
        return np.sort(
            np.stack([self.rng.choice(positions, keep, replace=False) for _ in range(images)]),
            axis=1,
        )

    def _add(self, columns: np.ndarray) -> None:
        """Queue patch columns ``[g, D, p]``; they enter ``gram`` once at least ``D`` wait, so
        each ``D × D`` float64 update serves as many columns as it has rows (the queue holds
        at most half the memory of ``gram`` itself, or ``_CHUNK_VALUES``)."""
        self._pending.append(columns)
        self._pending_columns += columns.shape[2]
        depth = columns.shape[1]
        if self._pending_columns >= min(depth, _CHUNK_VALUES // max(columns.shape[0] * depth, 1)):
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        columns = np.concatenate(self._pending, axis=2)
        self._pending, self._pending_columns = [], 0
        # Batched matmul against a contiguous transpose: 2-3× einsum's loops even for the
        # 9- and 25-deep patches of depthwise convolutions.
        rows = np.ascontiguousarray(columns.transpose(0, 2, 1))
        gram = np.matmul(columns, rows).astype(np.float64)
        self.gram = gram if self.gram is None else self.gram + gram
        self._gram_columns += columns.shape[2]

    @property
    def gram_count(self) -> int:
        """How many patch columns ``Σ x xᵀ`` is over."""
        return self._gram_columns + self._pending_columns

    def hessian(self) -> np.ndarray:
        """``E[x xᵀ]`` per group, ``[g, D, D]`` float64."""
        self._flush()
        if self.gram is None:
            raise ValueError("no layer input was observed")
        return self.gram / self._gram_columns

    def mean(self) -> np.ndarray:
        """``E[x]`` per group, ``[g, D]`` float64."""
        if self.total is None:
            raise ValueError("no layer input was observed")
        return self.total / self.count


def collect(
    model: ir.Model,
    targets: Sequence[WeightTarget],
    images: ImageSet,
    preprocessing: Preprocessing,
    batch_size: int = streaming.CALIBRATION_BATCH,
    ep: str = "auto",
    seed: int = 0,
) -> dict[str, InputStatistics]:
    """Stream ``images`` through ``model`` once and observe the input of every target layer.

    Returns one ``InputStatistics`` per target node name.
    """
    nodes = {node.name: node for node in model.graph}
    statistics: dict[str, InputStatistics] = {}
    inputs: dict[str, str] = {}
    for target in targets:
        node = nodes[target.node]
        shape = tuple(node.inputs[target.input_index].const_value.shape)
        depth = int(np.prod(shape)) // shape[target.out_axis]
        statistics[target.node] = InputStatistics(
            LayerGeometry.of(node, shape), positions_per_image(depth, len(images)), seed
        )
        inputs[target.node] = node.inputs[0].name
    tensors = sorted(set(inputs.values()))
    batches = streaming.stream(
        model, tensors, images, preprocessing, batch_size, ep, "layer inputs"
    )
    for outputs in batches:
        for name, observed in statistics.items():
            observed.update(outputs[inputs[name]])
    return statistics
