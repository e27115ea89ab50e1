"""Standard errors of pooled evaluations (``reporting.statistics``)."""

import numpy as np
import pytest

from onnxq.reporting.statistics import estimate, standard_error


def test_each_image_once_is_the_usual_standard_error():
    values = np.random.default_rng(0).normal(size=372)
    expected = values.std(ddof=1) / np.sqrt(len(values))
    assert standard_error(values) == pytest.approx(expected, rel=1e-12)
    names = [f"image{i}" for i in range(len(values))]
    assert standard_error(values, names) == pytest.approx(expected, rel=1e-12)


def test_an_image_evaluated_twice_the_same_counts_once():
    values = np.random.default_rng(1).normal(size=200)
    names = [f"image{i}" for i in range(200)]
    twice = standard_error(np.concatenate([values, values]), names + names)
    assert twice == pytest.approx(standard_error(values, names), rel=1e-12)
    # counted as independent, the copies would shrink it by √2
    assert standard_error(np.concatenate([values, values])) < 0.75 * twice


def test_it_matches_the_spread_of_pooled_means_over_overlapping_splits():
    """Three 372-image splits of 500 images, each image with its own effect (as an image's fp32
    margin decides whether it flips in any quantized model): the standard error must match
    the standard deviation of the pooled mean over many draws, where the independent one
    falls short."""
    rng = np.random.default_rng(2)
    means, clustered, independent = [], [], []
    for _ in range(400):
        effect = rng.normal(size=500)
        images = np.concatenate([np.sort(rng.choice(500, 372, replace=False)) for _ in range(3)])
        values = effect[images] + rng.normal(scale=0.5, size=len(images))
        means.append(values.mean())
        clustered.append(standard_error(values, images.tolist()))
        independent.append(standard_error(values))
    spread = np.std(means, ddof=1)
    assert np.mean(clustered) == pytest.approx(spread, rel=0.12)
    assert np.mean(independent) < 0.8 * spread


def test_a_constant_difference_and_a_single_image_have_no_error():
    assert standard_error(np.zeros(10), ["a", "b"] * 5) == 0.0
    assert standard_error([1.0, 3.0], ["a", "a"]) == 0.0


def test_names_must_match_the_values():
    with pytest.raises(ValueError, match="3 values but 2 image names"):
        standard_error([1.0, 2.0, 3.0], ["a", "b"])


def test_estimate_formats_the_mean_and_the_per_image_error():
    differences = np.array([1.0, 0.0, 0.0, -1.0, 1.0, 1.0])
    names = ["a", "b", "c", "a", "b", "c"]
    error = standard_error(differences, names)
    assert estimate(differences, names) == f"+{100 * differences.mean():.2f} ± {100 * error:.2f}"
    assert estimate(differences, names) == "+33.33 ± 16.67"  # counted independently: ± 33.33
    assert estimate([0.25, 0.5], scale=1, digits=4, signed=False) == "0.3750 ± 0.1250"
    assert estimate([-0.02, -0.04]) == "-3.00 ± 1.00"
