"""One experiment row: quantize a float model with a config, evaluate it, measure the cost.

Shared by the demo, the sweeps and the benchmarks so that every table is produced the same way.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from onnxq import evaluate, modelio
from onnxq.config import QuantConfig
from onnxq.data import ImageSet
from onnxq.evaluate import EvalResult
from onnxq.quantize import quantize


@dataclasses.dataclass(frozen=True)
class RowResult:
    """A quantized model's accuracy and what producing it cost."""

    config: QuantConfig
    result: EvalResult
    quantize_seconds: float
    output: Path | None = None


def run_row(
    float_model: str | Path,
    config: QuantConfig,
    calibration: ImageSet,
    evaluation: ImageSet,
    output: str | Path | None = None,
    ep: str = "auto",
    batch_size: int = 16,
) -> RowResult:
    """Quantize ``float_model`` with ``config`` (calibrating on ``calibration``), save it to
    ``output`` if given, and evaluate it on ``evaluation``."""
    model = modelio.load_model(float_model)
    preprocessing = modelio.get_preprocessing(model)
    start = time.perf_counter()
    quantize(model, config, calibration, preprocessing, batch_size=batch_size, ep=ep)
    seconds = time.perf_counter() - start
    if output is not None:
        modelio.save_model(model, output)
    result = evaluate.evaluate(model, evaluation, preprocessing, ep=ep)
    return RowResult(config, result, seconds, Path(output) if output else None)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _call_and_measure(function: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[Any, float, float]:
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start, peak_rss_mib()


def in_fresh_process(function: Callable[..., Any], *args, **kwargs) -> tuple[Any, float, float]:
    """Run ``function(*args, **kwargs)`` in a new process: ``(value, seconds, peak RSS MiB)``.

    A fresh (spawned) interpreter makes the peak memory of one job measurable on its own;
    ``function`` must be importable (a module-level function).
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_call_and_measure, function, args, kwargs).result()
