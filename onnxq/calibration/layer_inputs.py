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
import functools
from collections.abc import Collection, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from onnxq.analysis.plan import WeightTarget
from onnxq.base.errors import OnnxqError
from onnxq.calibration import streaming
from onnxq.core import rounding
from onnxq.io import runtime

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
    return _kernel_patches(x, geometry, positions)


def _kernel_patches(
    x: np.ndarray, geometry: LayerGeometry, positions: np.ndarray | None
) -> np.ndarray:
    """``patches`` of a Conv with a kernel larger than 1, a stride or padding: one gather.

    Each (tap, output position) pair names one input pixel, or the padding. Two ways to gather,
    the cheaper one for the sizes at hand (on EfficientNet-Lite0 and the ResNets, 1.5–5× the
    other): where the patches outnumber the input values, one ``np.take`` from a
    ``[C, N·pixels + 1]`` copy of the input whose last column is the padding's zero, which
    writes the ``[C, taps, N·k]`` layout directly; where few positions are kept from a large
    input, one ``np.take`` per image from the input itself, then a transposing copy.
    """
    batch, channels = x.shape[:2]
    spatial = x.shape[2:]
    rank = len(spatial)
    out = _output_shape(spatial, geometry)
    if positions is None:
        positions = np.broadcast_to(np.arange(int(np.prod(out))), (batch, int(np.prod(out))))
    where = np.unravel_index(positions, out)  # per axis [N, k]
    taps = np.indices(geometry.kernel).reshape(rank, -1)  # per axis [taps]
    pixel = np.zeros((taps.shape[1], batch, positions.shape[1]), dtype=np.intp)  # [taps, N, k]
    inside = np.ones(pixel.shape, dtype=bool)
    for axis, size in enumerate(spatial):
        coordinate = (
            where[axis] * geometry.strides[axis]
            - geometry.pads[axis]
            + (taps[axis] * geometry.dilations[axis])[:, None, None]
        )
        inside &= (coordinate >= 0) & (coordinate < size)
        pixel = pixel * size + np.clip(coordinate, 0, size - 1)
    pixels = int(np.prod(spatial))
    depth = channels // geometry.groups * taps.shape[1]
    if pixels <= 2 * pixel.shape[0] * pixel.shape[2]:
        columns = _gather_from_table(x.reshape(batch, channels, pixels), pixel, inside)
    else:
        columns = _gather_per_image(x.reshape(batch, channels, pixels), pixel, inside)
    return columns.reshape(geometry.groups, depth, -1)


def _gather_from_table(x: np.ndarray, pixel: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``[C, taps·N·k]`` from ``x [N, C, pixels]`` and the pixel of every tap, image and
    position ``[taps, N, k]``, through one copy of ``x`` with a zero column for the padding."""
    batch, channels, pixels = x.shape
    table = np.empty((channels, batch * pixels + 1), dtype=np.float32)
    table[:, :-1].reshape(channels, batch, pixels)[...] = x.transpose(1, 0, 2)
    table[:, -1] = 0.0
    index = pixel + (np.arange(batch) * pixels)[:, None]
    index[~inside] = batch * pixels
    return np.take(table, index.reshape(-1), axis=1)


def _gather_per_image(x: np.ndarray, pixel: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``_gather_from_table``'s result without copying ``x``: one ``np.take`` per image."""
    batch, channels, _ = x.shape
    taps, _, kept = pixel.shape
    gathered = np.empty((batch, channels, taps, kept), dtype=np.float32)
    for image in range(batch):
        out = gathered[image].reshape(channels, -1)
        np.take(x[image], pixel[:, image].reshape(-1), axis=1, out=out)
    if not inside.all():
        gathered *= inside.transpose(1, 0, 2)[:, None]
    return gathered.transpose(1, 2, 0, 3).reshape(channels, -1)


def _padded(x: np.ndarray, geometry: LayerGeometry) -> np.ndarray:
    """``x`` (any leading axes, then the spatial ones) with the Conv's zero padding."""
    rank = len(geometry.kernel)
    lead = [(0, 0)] * (x.ndim - rank)
    return np.pad(x, lead + list(zip(geometry.pads[:rank], geometry.pads[rank:])))


def _out_spatial(padded: tuple[int, ...], geometry: LayerGeometry) -> tuple[int, ...]:
    """The output size of a Conv on an input of padded spatial size ``padded``."""
    return tuple(
        (size - d * (k - 1) - 1) // s + 1
        for size, k, s, d in zip(padded, geometry.kernel, geometry.strides, geometry.dilations)
    )


def _tap_windows(geometry: LayerGeometry, out: tuple[int, ...]):
    """Each kernel tap and the strided spatial slices of the padded input it multiplies."""
    for tap in np.ndindex(*geometry.kernel):
        yield tap, tuple(
            slice(t * d, t * d + s * (n - 1) + 1, s)
            for t, d, s, n in zip(tap, geometry.dilations, geometry.strides, out)
        )


def output_positions(x_shape: tuple[int, ...], geometry: LayerGeometry) -> int:
    """Output positions per image of a Conv (1 for Gemm/MatMul rows)."""
    if not geometry.kernel:
        return 1
    return int(np.prod(_output_shape(x_shape[2:], geometry)))


def _output_shape(spatial: tuple[int, ...], geometry: LayerGeometry) -> tuple[int, ...]:
    """The output size of a Conv (explicit pads) on an unpadded input of size ``spatial``."""
    rank = len(spatial)
    padded = tuple(
        size + geometry.pads[axis] + geometry.pads[rank + axis] for axis, size in enumerate(spatial)
    )
    return _out_spatial(padded, geometry)


def patch_sums(x: np.ndarray, geometry: LayerGeometry) -> np.ndarray:
    """``Σ x`` over every patch of every image: ``[groups, D]`` float64.

    Each kernel tap sums one strided slice of the padded, batch-summed input.
    """
    if not geometry.kernel:
        return x.reshape(-1, x.shape[-1]).sum(axis=0, dtype=np.float64)[None]
    rank = len(geometry.kernel)
    image = _padded(x.sum(axis=0, dtype=np.float64), geometry)
    sums = np.empty((x.shape[1],) + geometry.kernel)
    for tap, window in _tap_windows(geometry, _out_spatial(image.shape[1:], geometry)):
        sums[(slice(None),) + tap] = image[(slice(None),) + window].sum(axis=tuple(range(1, 1 + rank)))
    return sums.reshape(geometry.groups, -1)


def batched_gram(
    columns: np.ndarray, other: np.ndarray | None = None, device: str | None = None
):
    """``B Aᵀ`` for each group's ``A`` in ``columns [g, D, p]`` and ``B`` in ``other`` (default
    ``A``), float32; a torch tensor on ``device`` where one is named (a GPU).

    One group: NumPy's 2-D matrix product (one BLAS call, a symmetric rank-k update for
    ``A Aᵀ``: half the multiply-adds). Many groups of a few inputs each (a depthwise layer's 9 or
    25 taps per channel): ONNX Runtime's batched MatMul, 4× NumPy's one-BLAS-call-per-group
    loop on EfficientNet-Lite0's 5×5 depthwise layers.
    """
    if device is not None:
        import torch

        right = torch.from_numpy(columns).to(device)
        left = right if other is None else torch.from_numpy(other).to(device)
        return torch.matmul(left, right.transpose(1, 2))
    if columns.shape[0] == 1:
        right = columns[0]
        left = right if other is None else other[0]
        return np.dot(left, right.T)[None]
    other = columns if other is None else other
    feeds = {"left": np.ascontiguousarray(other), "right": np.ascontiguousarray(columns)}
    return _product_session().run(None, feeds)[0]


@functools.cache
def _product_session():
    """A CPU session computing ``MatMul(B, Transpose(A))`` over a batch of matrices."""
    helper = onnx.helper
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["right"], ["transposed"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["left", "transposed"], ["product"]),
        ],
        "batched_product",
        [
            helper.make_tensor_value_info("left", onnx.TensorProto.FLOAT, ["g", "d", "p"]),
            helper.make_tensor_value_info("right", onnx.TensorProto.FLOAT, ["g", "d", "p"]),
        ],
        [helper.make_tensor_value_info("product", onnx.TensorProto.FLOAT, ["g", "d", "d"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return runtime.create_session(model.SerializeToString(), ep="cpu", spinning=False)


def positions_per_image(depth: int, images: int, samples_per_dim: int = 256) -> int:
    """How many output positions of each image feed ``H`` so that it sees ``samples_per_dim·D``."""
    return max(1, -(-samples_per_dim * depth // max(images, 1)))


class InputStatistics:
    """Streams one layer's input into ``Σ x xᵀ`` ``[g, D, D]`` and ``Σ x`` ``[g, D]``.

    ``Σ x`` is over every patch. ``Σ x xᵀ`` is over at most ``positions_per_image`` output
    positions of each image, drawn at random (seeded) when there are more: a ``D × D`` second
    moment needs a few hundred samples per dimension, not every pixel of every image.

    ``Σ x xᵀ`` is kept only when at least ``min_gram_samples`` patch columns will feed it
    (planned on the first batch from its positions and ``images``, the number of images that
    will be streamed); otherwise, or when ``min_gram_samples`` is None, only ``Σ x`` is kept and
    ``has_gram`` is False.

    ``paired``: every batch comes with a reference input ``r`` of the same shape (the layer's
    input in the float network, while ``x`` is its input in a partly quantized one); then
    ``Σ r xᵀ`` over the same patch columns and the reference's ``Σ r`` are kept as well
    (``cross_moment``, ``reference.mean``).

    ``device`` names a torch device (a GPU) on which the products are summed.
    """

    def __init__(
        self,
        geometry: LayerGeometry,
        positions_per_image: int | None = None,
        seed: int = 0,
        images: int | None = None,
        min_gram_samples: int | None = 0,
        paired: bool = False,
        device: str | None = None,
    ) -> None:
        self.geometry = geometry
        self.device = device  # where the moments are summed (torch); None: NumPy
        self.positions_per_image = positions_per_image
        self.rng = np.random.default_rng(seed)
        self.images = images
        self.min_gram_samples = min_gram_samples
        self.has_gram: bool | None = None  # decided on the first batch
        self.gram: np.ndarray | None = None
        self.count = 0
        self._total: np.ndarray | None = None  # Σ x over the patches of inputs already folded
        self._input_sum: np.ndarray | None = None  # Σ of the inputs over images, not yet folded
        self._gram_columns = 0  # columns summed into ``gram``
        self._pending: list[np.ndarray] = []  # patch columns not yet in ``gram``
        self._pending_columns = 0
        self.reference = InputStatistics(geometry, min_gram_samples=None) if paired else None
        self.cross: np.ndarray | None = None  # Σ r xᵀ
        self._pending_reference: list[np.ndarray] = []

    @property
    def paired(self) -> bool:
        return self.reference is not None

    def update(self, x: np.ndarray, reference: np.ndarray | None = None) -> None:
        """Fold one batch of the layer's input in, a few images at a time (with its reference
        input, if paired)."""
        x = np.asarray(x, dtype=np.float32)
        if (reference is not None) != self.paired:
            raise ValueError("a paired statistic takes a reference input with every batch, "
                             "an unpaired one none")
        if reference is not None:
            reference = np.asarray(reference, dtype=np.float32)
            self.reference.update(reference)
        geometry = self.geometry.for_input(x.shape[2:]) if self.geometry.kernel else self.geometry
        self._sum_inputs(x)
        if not geometry.kernel:
            rows = x.size // x.shape[-1]
            self.count += rows
            if self._decide_gram(rows // len(x)):
                self._add(
                    patches(x, geometry), None if reference is None else patches(reference, geometry)
                )
            return
        positions = output_positions(x.shape, geometry)
        self.count += positions * len(x)
        keep = self.positions_per_image
        kept = positions if keep is None else min(positions, keep)
        if not self._decide_gram(kept):
            return
        chosen = self._choose(len(x), positions)
        step = max(1, _CHUNK_VALUES // (kept * x.shape[1] * int(np.prod(geometry.kernel))))
        for start in range(0, len(x), step):
            part = None if chosen is None else chosen[start : start + step]
            images = slice(start, start + step)
            self._add(
                patches(x[images], geometry, part),
                None if reference is None else patches(reference[images], geometry, part),
            )

    def _decide_gram(self, columns_per_image: int) -> bool:
        """Whether ``Σ x xᵀ`` is kept, decided on the first batch."""
        if self.has_gram is None:
            planned = None if self.images is None else columns_per_image * self.images
            self.has_gram = self.min_gram_samples is not None and (
                planned is None or planned >= self.min_gram_samples
            )
        return self.has_gram

    def _sum_inputs(self, x: np.ndarray) -> None:
        """Add the batch to ``Σ x`` over images; patch sums are taken once, from the total
        (patch sums are linear in the input), so each batch costs one pass over its values."""
        if not self.geometry.kernel:
            total = patch_sums(x, self.geometry)
            self._total = total if self._total is None else self._total + total
            return
        if self._input_sum is not None and self._input_sum.shape != x.shape[1:]:
            self._fold_input_sum()  # the spatial size changed: fold what was summed so far
        if self._input_sum is None:  # float32: a sum of one batch sum per few images
            self._input_sum = np.zeros(x.shape[1:], dtype=np.float32)
        self._input_sum += x.sum(axis=0)

    def _fold_input_sum(self) -> None:
        if self._input_sum is None:
            return
        geometry = self.geometry.for_input(self._input_sum.shape[1:])
        total = patch_sums(self._input_sum[None], geometry)
        self._total = total if self._total is None else self._total + total
        self._input_sum = None

    def _choose(self, images: int, positions: int) -> np.ndarray | None:
        """Per image, the sorted output positions that feed ``H`` (None: all of them)."""
        keep = self.positions_per_image
        if not self.geometry.kernel or keep is None or keep >= positions:
            return None
        return np.sort(
            np.stack([self.rng.choice(positions, keep, replace=False) for _ in range(images)]),
            axis=1,
        )

    def _add(self, columns: np.ndarray, reference: np.ndarray | None = None) -> None:
        """Queue patch columns ``[g, D, p]`` (and the reference's); they enter ``gram`` once at
        least ``D/4`` wait, so each ``D × D`` update serves a quarter as many columns as it has
        rows (the queue holds at most a quarter of the memory of ``gram`` itself, or
        ``_CHUNK_VALUES``)."""
        self._pending.append(columns)
        if reference is not None:
            self._pending_reference.append(reference)
        self._pending_columns += columns.shape[2]
        depth = columns.shape[1]
        wanted = max(depth // 4, 1)
        if self._pending_columns >= min(wanted, _CHUNK_VALUES // max(columns.shape[0] * depth, 1)):
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        columns = _joined(self._pending)
        if self._pending_reference:
            cross = batched_gram(columns, _joined(self._pending_reference), self.device)
            if self.cross is None:
                self.cross = cross
            else:
                self.cross += cross
        self._pending, self._pending_reference, self._pending_columns = [], [], 0
        # ``A Aᵀ`` of one buffer (``batched_gram``). The sum stays float32:
        # each update already sums at least ``D`` columns in float32, a few hundred updates add
        # a relative error near 1e-5, far below GPTQ's 1 % damping, and every layer's ``D × D``
        # sum is alive until the pass ends, so float64 would double the peak memory.
        gram = batched_gram(columns, device=self.device)
        if self.gram is None:
            self.gram = gram
        else:
            self.gram += gram
        self._gram_columns += columns.shape[2]

    @property
    def gram_count(self) -> int:
        """How many patch columns ``Σ x xᵀ`` is over."""
        return self._gram_columns + self._pending_columns

    def hessian(self) -> np.ndarray:
        """``E[x xᵀ]`` per group, ``[g, D, D]`` float64."""
        self._flush()
        if self.has_gram is False:
            raise ValueError("this layer's input second moment was not kept (has_gram is False)")
        if self.gram is None:
            raise ValueError("no layer input was observed")
        return _float64(self.gram) / self._gram_columns

    def cross_moment(self) -> np.ndarray:
        """``E[r xᵀ]`` per group over the same columns as ``hessian``, ``[g, D, D]`` float64."""
        self._flush()
        if self.cross is None:
            raise ValueError("no paired input was observed")
        return _float64(self.cross) / self._gram_columns

    def release_moments(self) -> None:
        """Drop ``Σ x xᵀ`` and ``Σ r xᵀ`` (once the layer's codes are chosen); the sums stay."""
        self._flush()
        self.gram = self.cross = None

    def mean(self) -> np.ndarray:
        """``E[x]`` per group, ``[g, D]`` float64."""
        self._fold_input_sum()
        if self._total is None:
            raise ValueError("no layer input was observed")
        return self._total / self.count


def _float64(array) -> np.ndarray:
    """A float32 sum (NumPy, or torch on any device) as a float64 NumPy array."""
    if isinstance(array, np.ndarray):
        return array.astype(np.float64)
    return array.double().cpu().numpy()


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)


@dataclasses.dataclass
class LayerInputs:
    """The ``InputStatistics`` of a set of layers and the tensor each one reads."""

    statistics: dict[str, InputStatistics]  # by node name
    tensors: dict[str, str]  # node name → its input tensor

    def sinks(self) -> dict[str, list[streaming.Sink]]:
        """Each layer's ``update`` as a sink of its input tensor (``streaming.feed``)."""
        sinks: dict[str, list[streaming.Sink]] = {}
        for node, observed in self.statistics.items():
            sinks.setdefault(self.tensors[node], []).append(observed.update)
        return sinks


def observe(
    model: ir.Model,
    targets: Sequence[WeightTarget],
    images: int,
    seed: int = 0,
    second_moments: bool = True,
    paired: Collection[str] = (),
    device: str | None = None,
) -> LayerInputs:
    """Empty statistics of every target layer's input, for ``images`` images to come.

    ``second_moments`` False keeps only ``Σ x`` (bias correction). Otherwise ``Σ x xᵀ`` is kept
    where rounding would use it: on too few samples it is shrunk all the way to its diagonal
    (``rounding.min_correlated_samples``), and GPTQ on a diagonal is round-to-nearest.
    ``paired``: the nodes whose statistics take a reference input with every batch
    (``InputStatistics``); ``device``: the torch device that sums the moments (None: NumPy).
    """
    nodes = {node.name: node for node in model.graph}
    statistics: dict[str, InputStatistics] = {}
    tensors: dict[str, str] = {}
    for target in targets:
        node = nodes[target.node]
        shape = tuple(node.inputs[target.input_index].const_value.shape)
        depth = int(np.prod(shape)) // shape[target.out_axis]
        statistics[target.node] = InputStatistics(
            LayerGeometry.of(node, shape),
            positions_per_image(depth, images),
            seed,
            images,
            rounding.min_correlated_samples(depth) if second_moments else None,
            target.node in paired,
            device,
        )
        tensors[target.node] = node.inputs[0].name
    return LayerInputs(statistics, tensors)

