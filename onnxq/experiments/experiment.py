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

from onnxq.calibration.cache import CalibrationCache
from onnxq.calibration.streaming import CALIBRATION_BATCH
from onnxq.core.config import QuantConfig
from onnxq.io.data import ImageSet
from onnxq.pipeline import modelio
from onnxq.pipeline.quantize import QuantizeResult, quantize
from onnxq.reporting import evaluate
from onnxq.reporting.evaluate import EvalResult


@dataclasses.dataclass(frozen=True)
class RowResult:
    """A quantized model's accuracy and what producing it cost."""

    config: QuantConfig
    result: EvalResult
    quantize_seconds: float
    output: Path | None = None
    quantized: QuantizeResult | None = dataclasses.field(default=None, repr=False, compare=False)
    evaluate_seconds: float = 0.0


def run_row(
    float_model: str | Path,
    config: QuantConfig,
    calibration: ImageSet,
    evaluation: ImageSet,
    output: str | Path | None = None,
    ep: str = "auto",
    batch_size: int = CALIBRATION_BATCH,
    calibration_cache: CalibrationCache | None = None,
    runtime_name: str = "onnxruntime",
) -> RowResult:
    """Quantize ``float_model`` with ``config`` (calibrating on ``calibration``), save it to
    ``output`` if given, and evaluate it on ``evaluation`` with ``runtime_name``."""
    model = modelio.load_model(float_model)
    preprocessing = modelio.get_preprocessing(model)
    start = time.perf_counter()
    quantized = quantize(
        model, config, calibration, preprocessing, batch_size=batch_size, ep=ep,
        calibration_cache=calibration_cache,
    )
    seconds = time.perf_counter() - start
    if output is not None:
        modelio.save_model(model, output)
    start = time.perf_counter()
    result = evaluate.evaluate(model, evaluation, preprocessing, ep=ep, runtime_name=runtime_name)
    return RowResult(
        quantized.config, result, seconds, Path(output) if output else None, quantized,
        time.perf_counter() - start,
    )


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB.

    On Linux this is ``VmHWM``: ``ru_maxrss`` survives ``exec``, so a process spawned from a
    large parent would report the parent's size at the fork.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
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
