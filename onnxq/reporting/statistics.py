"""Standard errors of means over evaluated images, for tables that pool several splits.

The benchmarks draw each calibration/evaluation split from the same 500 sample images, so an
image is evaluated in about two of every three splits. Its evaluations are not independent: an
image whose fp32 margin is small flips in most quantized models, whatever the split. Treating
the pooled evaluations as independent understates the error of a mean (EfficientNet-Lite0, three
128/372 splits: by a factor of 1.2 to 1.55). The error here is the cluster-robust one over
images: each image's deviations from the mean are summed before they are squared, which is the
usual ``std / √n`` when every image appears once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def standard_error(values: Sequence[float] | np.ndarray,
                   images: Sequence[object] | None = None) -> float:
    """The standard error of the mean of ``values`` (one per evaluation); ``images`` names the
    image of each evaluation, so that repeated evaluations of an image count as one sample.
    0.0 for fewer than two images."""
    values = np.asarray(values, np.float64).ravel()
    if images is None:
        images = range(len(values))
    if len(images) != len(values):
        raise ValueError(f"{len(values)} values but {len(images)} image names")
    index = {name: i for i, name in enumerate(dict.fromkeys(images))}
    if len(index) < 2:
        return 0.0
    sums = np.zeros(len(index))
    np.add.at(sums, [index[name] for name in images], values - values.mean())
    return float(np.sqrt(len(index) / (len(index) - 1) * (sums**2).sum()) / len(values))


def estimate(values: Sequence[float] | np.ndarray, images: Sequence[object] | None = None,
             scale: float = 100.0, digits: int = 2, signed: bool = True) -> str:
    """``mean ± standard error`` of ``values`` times ``scale`` (100: shares in points), e.g.
    ``+0.45 ± 0.63``; ``signed`` for a paired difference, ``images`` as in ``standard_error``."""
    values = np.asarray(values, np.float64).ravel()
    sign = "+" if signed else ""
    error = standard_error(values, images)
    return f"{scale * values.mean():{sign}.{digits}f} ± {scale * error:.{digits}f}"
