"""Choosing integer codes on a fixed quantization grid so that a layer's output changes least.

Round-to-nearest minimises ``‖W − Ŵ‖²``; what matters is the layer output, ``‖(W − Ŵ) X‖²``
over the layer's inputs ``X``, i.e. ``tr(ΔW H ΔWᵀ)`` with ``H = E[x xᵀ]`` (see
``onnxq.calibration.layer_inputs``). ``gptq_codes`` rounds one input column at a time and
spreads each column's rounding error over the columns not yet rounded, through the Cholesky factor
of ``H⁻¹`` (optimal brain quantization, as in GPTQ). The grid (scale and zero point of every
weight) is given and never changes, so the result is stored exactly like a round-to-nearest weight.

Arrays are laid out ``[g, R, D]``: ``g`` Conv groups (1 for dense layers, one per channel for
depthwise ones), ``R`` output channels per group, ``D`` inputs per output (``(C/g)·kh·kw``).

``gptq_codes`` and ``float_target`` take NumPy arrays or torch tensors (on a GPU, say) and
return the same kind: one implementation, written against the array API through
``array-api-compat`` (plus the integer-array indexing both libraries share). NumPy arrays keep
one NumPy-only step, the in-place LAPACK factorization of wide layers, which holds one ``D × D``
array per layer instead of several.
"""

from __future__ import annotations

import array_api_compat
import numpy as np
import scipy.linalg

from onnxq.core import quant_math

#: Columns rounded before the rest of the weight gets one matrix-product update (GPTQ's lazy
#: batch); within it, columns rounded one by one before the rest of the block gets one.
_LAZY_BLOCK = 128
_EAGER_BLOCK = 16

#: Below this many inputs, NumPy factors are inverted in one batched call.
_BATCHED_INVERSE_DEPTH = 64

#: What a failed factorization raises: NumPy's error, or torch's (a RuntimeError).
_FACTORIZATION_ERRORS = (np.linalg.LinAlgError, RuntimeError)


def output_error(delta: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """``E‖ΔW x‖²`` per group: ``tr(ΔW H ΔWᵀ)`` for ``delta [g, R, D]`` and ``hessian [g, D, D]``."""
    delta = np.asarray(delta, dtype=np.float64)
    return np.einsum("grd,gde,gre->g", delta, hessian, delta)


#: How strongly a second moment is shrunk towards its diagonal per dimension and sample.
SHRINK_STRENGTH = 2.0


def shrinkage(depth: int, samples: int, strength: float = SHRINK_STRENGTH) -> float:
    """``λ = min(1, strength · D / samples)``: how much of ``H``'s off-diagonal is dropped."""
    return min(1.0, strength * depth / max(samples, 1))


def min_correlated_samples(depth: int, strength: float = SHRINK_STRENGTH) -> int:
    """The fewest samples whose ``D × D`` second moment keeps some off-diagonal (``λ < 1``).

    On fewer, ``shrink_to_diagonal`` leaves only the diagonal, and GPTQ on a diagonal second
    moment passes no error on: it is round-to-nearest.
    """
    return int(strength * depth) + 1


def shrink_to_diagonal(
    hessian: np.ndarray, samples: int, strength: float = SHRINK_STRENGTH
) -> np.ndarray:
    """``(1 − λ) H + λ diag(H)`` with ``λ = shrinkage(D, samples)``, in place (returns ``hessian``).

    A ``D × D`` second moment estimated from few samples per dimension has spurious
    off-diagonal terms that error compensation would fit; shrinking them in proportion to
    ``D / samples`` keeps well-sampled layers as they are and turns a layer seen on too few
    samples (a classifier fed one vector per image) back into round-to-nearest.
    """
    depth = hessian.shape[-1]
    weight = shrinkage(depth, samples, strength)
    diagonal = np.diagonal(hessian, axis1=-2, axis2=-1).copy()
    hessian *= 1.0 - weight
    index = np.arange(depth)
    hessian[..., index, index] += weight * diagonal
    return hessian


def gptq_codes(
    weight: np.ndarray,
    hessian: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    bits: int,
    signed: bool,
    restricted: bool = False,
    damping: float = 0.01,
    act_order: bool = True,
) -> np.ndarray:
    """Integer codes for ``weight [g, R, D]`` on the grid ``scale``/``zero_point`` (same shape).

    Group ``g``'s ``R`` rows all read inputs with second moment ``hessian[g]`` ``[D, D]``.
    ``damping`` is added to the diagonal as a fraction of its mean; ``act_order`` rounds the
    columns with the largest input energy first. Each code is rounded as ONNX QuantizeLinear
    rounds (float32, half to even), so without error to pass on this is round-to-nearest.
    """
    xp = array_api_compat.array_namespace(weight, hessian, scale, zero_point)
    order = _column_order(hessian, act_order, xp)
    backwards = xp.flip(order, axis=1)  # J P H Pᵀ J: in rounding order, reversed (one new array)
    group = xp.arange(order.shape[0], device=array_api_compat.device(order))[:, None, None]
    reversed_hessian = xp.astype(hessian, xp.float64, copy=False)[
        group, backwards[:, :, None], backwards[:, None, :]
    ]
    upper = _inverse_cholesky(reversed_hessian, damping)
    # Columns first (``[g, D, R]``), in rounding order: each column a contiguous row.
    work, scale, zero_point = (
        xp.take_along_axis(
            xp.permute_dims(xp.astype(a, xp.float64, copy=False), (0, 2, 1)),
            order[:, :, None],
            axis=1,
        )
        for a in (weight, scale, zero_point)
    )
    grid = _Grid(scale, zero_point, bits, signed, restricted, xp)
    codes = xp.empty(work.shape, dtype=xp.int32, device=array_api_compat.device(work))
    inverse_diagonal = 1.0 / xp.linalg.diagonal(upper)  # [g, D]
    errors = xp.empty_like(work)  # each column's error over its pivot, [g, D, R]
    columns = work.shape[1]
    for start in range(0, columns, _LAZY_BLOCK):
        stop = min(start + _LAZY_BLOCK, columns)
        for inner in range(start, stop, _EAGER_BLOCK):
            inner_stop = min(inner + _EAGER_BLOCK, stop)
            for column in range(inner, inner_stop):
                values = work[:, column]
                code = grid.round(values, column)
                codes[:, column] = code
                error = (values - grid.dequantize(code, column)) * inverse_diagonal[:, column, None]
                errors[:, column] = error
                following = upper[:, column, column + 1 : inner_stop]  # [g, rest]
                work[:, column + 1 : inner_stop] -= following[:, :, None] * error[:, None, :]
            _update(work, errors, upper, inner, inner_stop, stop, xp)
        _update(work, errors, upper, start, stop, columns, xp)
    return _take_columns(xp.permute_dims(codes, (0, 2, 1)), xp.argsort(order, axis=1), xp)


def _update(work, errors, upper, start: int, stop: int, end: int, xp) -> None:
    """GPTQ's lazy update: columns ``[stop, end)`` take the errors of columns ``[start, stop)``."""
    if stop < end:
        block = xp.permute_dims(upper[:, start:stop, stop:end], (0, 2, 1))  # [g, later, block]
        work[:, stop:end] -= xp.matmul(block, errors[:, start:stop])


class _Grid:
    """Per-weight scale and zero point (``[g, D, R]``), rounding one column as ONNX
    QuantizeLinear does (float32, half to even, clamped), with the float32 copies made once."""

    def __init__(self, scale, zero_point, bits: int, signed: bool, restricted: bool, xp) -> None:
        self.xp = xp
        self.scale, self.zero_point = scale, zero_point
        self.scale32 = xp.astype(scale, xp.float32)
        self.zero_point32 = xp.astype(zero_point, xp.float32)
        self.low, self.high = quant_math.integer_range(bits, signed, restricted)

    def round(self, values, column: int):
        """The codes of one column's values (float32 integers)."""
        xp = self.xp
        code = xp.round(xp.astype(values, xp.float32) / self.scale32[:, column])
        # The arrays' own clip (NumPy's and torch's): array-api-compat's took a third of
        # EfficientNet-Lite0's column loop checking its arguments.
        return (code + self.zero_point32[:, column]).clip(self.low, self.high)

    def dequantize(self, code, column: int):
        """What those codes restore, in float64."""
        return (code - self.zero_point[:, column]) * self.scale[:, column]


def float_target(
    weight: np.ndarray, hessian: np.ndarray, difference: np.ndarray, damping: float = 0.01
) -> np.ndarray:
    """The weight ``W*`` whose output on the quantized network's inputs best matches the float
    layer's output on the float network's: for ``weight [g, R, D]``, ``hessian`` ``H̃ =
    E[x̃ x̃ᵀ]`` and ``difference`` ``E[x x̃ᵀ] − H̃`` (``[g, D, D]``, ``x`` the float input, ``x̃``
    the quantized one),

    ``E‖W x − Ŵ x̃‖² = tr((Ŵ − W*) H̃ (Ŵ − W*)ᵀ) + const``  with  ``W* = W + W Δ H̃⁻¹``,

    so GPTQ of ``W*`` on ``H̃`` minimises the error against the float output. ``H̃`` is damped as
    ``gptq_codes`` damps it; with ``x̃ = x`` the difference is zero and ``W* = W``.
    """
    xp = array_api_compat.array_namespace(weight, hessian, difference)
    damped = xp.asarray(hessian, dtype=xp.float64, copy=True)
    wanted = xp.matmul(xp.permute_dims(difference, (0, 2, 1)), xp.permute_dims(weight, (0, 2, 1)))
    for _ in _damped(damped, damping):
        try:
            correction = xp.linalg.solve(damped, wanted)
        except _FACTORIZATION_ERRORS:
            continue
        return weight + xp.permute_dims(correction, (0, 2, 1))
    raise np.linalg.LinAlgError("the layer's input second moment is not positive definite")


def _column_order(hessian, act_order: bool, xp):
    """Per group, the order in which columns are rounded: ``[g, D]``."""
    groups, depth = hessian.shape[:2]
    if not act_order:
        columns = xp.arange(depth, device=array_api_compat.device(hessian))
        return xp.asarray(xp.broadcast_to(columns, (groups, depth)), copy=True)
    return xp.argsort(-xp.linalg.diagonal(hessian), axis=1, stable=True)


def _take_columns(array, order, xp):
    return xp.take_along_axis(array, order[:, None, :], axis=2)


def _inverse_cholesky(reversed_hessian, damping: float):
    """Upper Cholesky factor ``U`` of the damped ``H⁻¹`` (``H⁻¹ = Uᵀ U``), per group, from the
    reversed second moment ``J H J`` (float64, overwritten).

    With ``J H J = L Lᵀ``, ``U = J L⁻¹ J``: one Cholesky factorization and one triangular
    inverse (a third of the work of inverting ``H`` and factorizing the inverse). Inputs never
    seen non-zero get a unit diagonal, so their columns round to nearest and pass no error on.
    Damping grows tenfold until the damped matrix is positive definite. Only ``U``'s upper
    triangle is meaningful (GPTQ reads nothing else).
    """
    xp = array_api_compat.array_namespace(reversed_hessian)
    depth = reversed_hessian.shape[1]
    in_place = array_api_compat.is_numpy_array(reversed_hessian) and depth >= _BATCHED_INVERSE_DEPTH
    factorize = _factorize_in_place if in_place else _factorize_batched
    for added in _damped(reversed_hessian, damping):
        inverse = factorize(reversed_hessian, added)
        if inverse is not None:
            return xp.flip(inverse, axis=(1, 2))
    raise np.linalg.LinAlgError("the layer's input second moment is not positive definite")


def _damped(matrix, damping: float):
    """Damp ``matrix`` ``[g, D, D]`` in place, more at each step: its diagonal becomes the
    undamped one (a non-positive entry, an input never seen non-zero, as 1) plus
    ``damping · 10^k`` times its mean, for k = 0 … 5; yields the amount added, ``[g, 1]``."""
    xp = array_api_compat.array_namespace(matrix)
    undamped = xp.linalg.diagonal(matrix)
    undamped = xp.where(undamped <= 0, xp.ones_like(undamped), undamped)  # a new array
    mean = xp.mean(undamped, axis=1)[:, None]
    index = xp.arange(matrix.shape[1], device=array_api_compat.device(matrix))
    for attempt in range(6):
        added = (damping * 10**attempt) * mean
        matrix[:, index, index] = undamped + added
        yield added


def _positive_pivots(lower, added) -> bool:
    """Every pivot of a positive semidefinite H plus δI is at least δ; a smaller one means H is
    indefinite and only rounding let the factorization through."""
    xp = array_api_compat.array_namespace(lower)
    return not bool(xp.any(xp.linalg.diagonal(lower) ** 2 < 0.5 * added))


def _factorize_batched(matrix, added):
    """``L⁻¹`` of every group's matrix in batched calls (NumPy: narrow matrices, the 9–25 inputs
    of a depthwise channel, hundreds of groups; torch: every layer); None if one is not
    positive definite."""
    xp = array_api_compat.array_namespace(matrix)
    try:
        lower = xp.linalg.cholesky(matrix)
    except _FACTORIZATION_ERRORS:
        return None
    return xp.linalg.inv(lower) if _positive_pivots(lower, added) else None


def _factorize_in_place(matrix: np.ndarray, added: np.ndarray) -> np.ndarray | None:
    """``L⁻¹`` of wide matrices with LAPACK, group by group, in ``matrix``'s own memory: its
    transpose (the same symmetric matrix, Fortran-ordered) gets ``L`` and then ``L⁻¹`` in its
    lower triangle, the upper one keeps the matrix. Returns that transpose (``L⁻¹`` below the
    diagonal), or None, with ``matrix`` restored, if one is not positive definite."""
    transposed = matrix.transpose(0, 2, 1)  # each group Fortran-contiguous
    for group, (block, pivot) in enumerate(zip(transposed, added)):
        _, info = scipy.linalg.lapack.dpotrf(block, lower=1, clean=0, overwrite_a=1)
        if info != 0 or not _positive_pivots(block, pivot):
            for done in transposed[: group + 1]:  # lower triangles back from the upper ones
                for column in range(len(done) - 1):
                    done[column + 1 :, column] = done[column, column + 1 :]
            return None
        _, info = scipy.linalg.lapack.dtrtri(block, lower=1, overwrite_c=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"triangular inverse failed (LAPACK info {info})")
    return transposed
