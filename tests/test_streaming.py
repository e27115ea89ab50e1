"""The calibration pass: every sink sees every batch of its tensor, in order, whatever threads run them."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info
from tiny_models import TINY_PREPROCESSING

from onnxq.calibration import streaming
from onnxq.pipeline import modelio

TENSORS = ("conv1.out", "conv2.out", "dw3.out")


def _blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_feed_gives_each_sink_its_batches_in_order(tiny_path, sample_images):
    model = modelio.load_model(tiny_path)
    images = sample_images.subset(range(10))
    expected = {name: [] for name in TENSORS}
    for outputs in streaming.stream(model, TENSORS, images, TINY_PREPROCESSING, 3, "cpu"):
        for name in TENSORS:
            expected[name].append(outputs[name].copy())
    seen: dict[tuple[str, int], list[np.ndarray]] = {}
    threads: set[int] = set()

    def sink(name: str, index: int):
        def consume(x: np.ndarray) -> None:
            threads.add(threading.get_ident())
            seen.setdefault((name, index), []).append(x.copy())
        return consume

    sinks = {name: [sink(name, 0), sink(name, 1)] for name in TENSORS}
    blas_before = _blas_threads()
    streaming.feed(model, sinks, images, TINY_PREPROCESSING, 3, "cpu")
    assert _blas_threads() == blas_before  # the BLAS limit is lifted after the pass
    assert len(seen) == 2 * len(TENSORS)
    for (name, _), batches in seen.items():
        assert [len(b) for b in batches] == [3, 3, 3, 1]
        for got, want in zip(batches, expected[name], strict=True):
            np.testing.assert_array_equal(got, want)
    assert threading.get_ident() not in threads  # the sinks ran on the pass's worker threads


def test_feed_raises_a_sinks_error(tiny_path, sample_images):
    model = modelio.load_model(tiny_path)

    def broken(x: np.ndarray) -> None:
        raise ValueError("this sink cannot take a batch")

    with pytest.raises(ValueError, match="this sink cannot take a batch"):
        streaming.feed(model, {"conv1.out": [broken]}, sample_images.subset(range(4)),
                       TINY_PREPROCESSING, 2, "cpu")
