"""onnxq against ONNX Runtime's quantizer (``quantize_static``): same models, images and machine.

EfficientNet-Lite0 (real weights) and ResNet18 (seeded random weights: time, memory and speed
only). Every quantizer calibrates on the same 128 images of ../shared/data/imagenet-sample (a
seeded split) through a reader that decodes them with the model's recorded preprocessing, and
every model is scored on the other 372 images, paired with the fp32 model on the same images.

* Quantize wall time and peak RSS: each quantization runs alone in a fresh process (file in,
  file out, image decoding included); both are reported as ratios to ORT MinMax W8A8 on the same
  model, measured in the same run (``--repeats`` keeps the fastest of several alternating rounds).
* Images/s: ONNX Runtime's CPU execution provider, each model alternating with the fp32 model on
  the same batch, reported as the ratio of the two.
* Equivalent weight bits: ``onnx report``'s accounting (DESIGN.md's: Conv weights only).

onnxq rows pick up the technique flags of ``QuantConfig`` that exist when the script runs
(smooth, reorder, scale decomposition, rounding, bias correction). Prints markdown for
BENCHMARKS.md and writes the raw numbers to WORKDIR/results.json.

    python tools/bench_peers.py [--data DIR] [--workdir artifacts/bench_peers] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
from onnxq.models.export import export_model
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from onnxq.base import progress
from onnxq.base.errors import OnnxqError
from onnxq.calibration.streaming import CALIBRATION_BATCH
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.experiments.experiment import in_fresh_process
from onnxq.io import data, runtime
from onnxq.pipeline import modelio
from onnxq.pipeline.deploy import deploy
from onnxq.pipeline.quantize import quantize_file
from onnxq.reporting import accounting, evaluate
from onnxq.reporting.statistics import estimate

REPO = Path(__file__).resolve().parent.parent
CALIBRATION_IMAGES = 128
THROUGHPUT_BATCH = 32

# ---------------------------------------------------------------------------------------------
# Quantization jobs (module-level: they run in fresh processes)


def ort_job(source: str, destination: str, images: data.ImageSet, method: str, weight_bits: int,
            block_size: int = 0) -> str | None:
    """ONNX Runtime ``quantize_static``, QDQ, per-channel; returns why it refused, if it did."""
    preprocessing = modelio.get_preprocessing(modelio.load_model(source))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = data.iter_batches(images, preprocessing, CALIBRATION_BATCH)

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch[0]}

    try:
        quantize_static(
            source, destination, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt4 if weight_bits == 4 else QuantType.QInt8,
            calibrate_method=CalibrationMethod[method],
            extra_options={"BlockSize": block_size} if block_size else None,
        )
    except Exception as error:  # ORT refuses with many error types
        return str(error).strip().splitlines()[0][:120]
    return None


def onnxq_job(source: str, destination: str, images: data.ImageSet, config: dict) -> str | None:
    """``onnxq quantize`` through its Python API."""
    progress.set_quiet(True)
    quantize_file(source, destination, QuantConfig.from_dict(config), images)
    return None


# ---------------------------------------------------------------------------------------------
# Rows


@dataclasses.dataclass(frozen=True)
class Row:
    tool: str  # "ORT" or "onnxq"
    bits: str  # "W8A8", "W4A8", ...
    method: str
    job: Callable[..., str | None]
    options: tuple  # the job's arguments after (source, destination, images)
    slow: bool = False  # run once, whatever --repeats says (histogram calibrators, GPTQ)

    @property
    def name(self) -> str:
        text = f"{self.tool}-{self.bits}-{self.method}".lower()
        return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def onnxq_config(wbits, wscheme, gs=None, observer="minmax", fbits=8, placement="inputs",
                 weight_only=False, **techniques) -> QuantConfig:
    """A row's config: every setting explicit (round to nearest unless a technique says)."""
    techniques = {"rounding": "nearest", "bias_correction": False, **techniques}
    return QuantConfig(
        weights=Scheme.parse(wscheme, bits=wbits, group_size=gs, observer=observer),
        features=None if weight_only else Scheme.parse("per-tensor-affine", bits=fbits, observer=observer),
        calib_size=CALIBRATION_IMAGES,
        placement=placement,
        **techniques,
    )


#: Technique flags, tried in this order when ``QuantConfig`` has the field.
TECHNIQUES = (
    ("smooth", {"smooth_alpha": "auto"}),
    ("reorder", {"reorder": "auto"}),
    ("decompose", {"decompose_scales": True}),
    ("gptq", {"rounding": "gptq"}),
    ("bias-corr", {"bias_correction": True}),
)
ROUNDING = ("gptq", "bias-corr")


def with_techniques(base: QuantConfig, wanted: tuple[str, ...] | None = None) -> tuple[str, QuantConfig]:
    """``base`` with every technique of ``wanted`` (all by default) that this onnxq offers and
    ``base`` accepts, and their labels."""
    fields = {field.name for field in dataclasses.fields(QuantConfig)}
    labels, config = [], base
    for label, options in TECHNIQUES:
        if wanted is not None and label not in wanted or not set(options) <= fields:
            continue
        try:
            config = dataclasses.replace(config, **options)
        except (OnnxqError, ValueError, TypeError):
            continue
        labels.append(label)
    return "+".join(labels), config


def onnxq_row(bits: str, method: str, config: QuantConfig) -> Row:
    slow = config.resolved(calibrated=True).rounding != "nearest"  # minutes, and no time target
    return Row("onnxq", bits, method, onnxq_job, (config.to_dict(),), slow)


def ort_row(bits: str, method: str, weight_bits: int, block_size: int = 0) -> Row:
    slow = method in ("Entropy", "Percentile")
    label = f"{method}, block {block_size}" if block_size else method
    return Row("ORT", bits, label, ort_job, (method, weight_bits, block_size), slow)


def cli_default_w8a8() -> QuantConfig:
    """What ``onnxq quantize --calib DIR`` makes with no other flag (resolved by quantize)."""
    return QuantConfig(
        weights=Scheme.parse("per-channel-symmetric", bits=8),
        features=Scheme.parse("per-tensor-affine", bits=8),
        calib_size=CALIBRATION_IMAGES,
    )


def full_range_w8a8() -> QuantConfig:
    """The previous default: the full symmetric range ``2·absmax/255``, fused placement."""
    weights = Scheme.parse("per-channel-symmetric", bits=8, symmetric_range="full")
    return dataclasses.replace(onnxq_config(8, "per-channel-symmetric", placement="fused"), weights=weights)


def effnet_rows(quick: bool) -> list[Row]:
    methods = ("MinMax",) if quick else ("MinMax", "Entropy", "Percentile")
    rows = [ort_row("W8A8", method, 8) for method in methods]
    rows += [ort_row("W4A8", method, 4) for method in methods]
    rows.append(ort_row("W4A8", "MinMax", 4, block_size=32))
    rows += [
        onnxq_row("W8A8", "CLI default (restricted, fused)", cli_default_w8a8()),
        onnxq_row("W8A8", "per-channel, minmax, full range, fused", full_range_w8a8()),
        onnxq_row("W8A8", "per-channel, minmax, inputs", onnxq_config(8, "per-channel-symmetric")),
        onnxq_row("W8A8", "per-channel, minmax, fused", onnxq_config(8, "per-channel-symmetric", placement="fused")),
        onnxq_row("W8A8", "per-channel, mse, fused", onnxq_config(8, "per-channel-symmetric", observer="mse", placement="fused")),
    ]
    label, rounded8 = with_techniques(onnxq_config(8, "per-channel-symmetric", placement="fused"), ROUNDING)
    if label:
        rows.append(onnxq_row("W8A8", f"per-channel, minmax, {label}, fused", rounded8))
    rows += [
        onnxq_row("W4A8", "per-channel, minmax", onnxq_config(4, "per-channel-affine")),
        onnxq_row("W4A8", "per-channel, mse", onnxq_config(4, "per-channel-affine", observer="mse")),
        onnxq_row("W4A8", "gs 32, mse", onnxq_config(4, "per-group-affine", 32, "mse")),
        onnxq_row("W4A8", "gs 8, mse", onnxq_config(4, "per-group-affine", 8, "mse")),
    ]
    for grain, scheme, gs in (("per-channel", "per-channel-affine", None), ("gs 32", "per-group-affine", 32),
                              ("gs 8", "per-group-affine", 8)):
        label, config = with_techniques(onnxq_config(4, scheme, gs))
        if label:
            rows.append(onnxq_row("W4A8", f"{grain}, minmax, {label}", config))
    label, rounded = with_techniques(onnxq_config(4, "per-channel-affine"), ROUNDING)
    kept = ("first", "last", "depthwise3x3")
    mixed = dataclasses.replace(rounded, keep_8bit=kept)
    prefix = f"per-channel, minmax, {label + ', ' if label else ''}8-bit first/last/dw3×3"
    rows.append(onnxq_row("W4A8", prefix, mixed))
    rows.append(onnxq_row("W4A8", f"{prefix}, fused", dataclasses.replace(mixed, placement="fused")))
    weight_only = dataclasses.replace(rounded, features=None, keep_8bit=("last",))
    rows.append(onnxq_row("W4A32", f"per-channel, minmax, {label + ', ' if label else ''}8-bit last, weight-only", weight_only))
    return rows


def resnet_rows() -> list[Row]:
    """ORT's histogram calibrators are left out here: they hold every calibration output in memory."""
    return [ort_row("W8A8", "MinMax", 8)] + [
        onnxq_row("W8A8", "per-channel, minmax, fused", onnxq_config(8, "per-channel-symmetric", placement="fused")),
        onnxq_row("W8A8", "per-channel, mse, fused", onnxq_config(8, "per-channel-symmetric", observer="mse", placement="fused")),
        onnxq_row("W4A8", "gs 8, mse", onnxq_config(4, "per-group-affine", 8, "mse")),
    ]


# ---------------------------------------------------------------------------------------------
# Measurements


@dataclasses.dataclass
class Measured:
    row: Row
    path: Path
    refused: str | None = None
    seconds: float = float("inf")
    peak_mib: float = 0.0
    top1: float | None = None
    top5: float | None = None
    agreement: float | None = None
    speed_ratio: float | None = None
    wbits: float | None = None
    file_mib: float | None = None


def run_quantizers(rows: list[Row], source: Path, images: data.ImageSet, workdir: Path,
                   repeats: int) -> list[Measured]:
    """Quantize every row in fresh processes, alternating rows over ``repeats`` rounds."""
    measured = [Measured(row, workdir / f"{source.stem}-{row.name}.onnx") for row in rows]
    for round_index in range(repeats):
        for item in measured:
            if item.refused or (item.row.slow and round_index):
                continue
            refused, seconds, peak = in_fresh_process(
                item.row.job, str(source), str(item.path), images, *item.row.options
            )
            item.refused = refused
            item.seconds = min(item.seconds, seconds)
            item.peak_mib = max(item.peak_mib, peak)
            item.file_mib = None if refused else item.path.stat().st_size / 2**20
            print(f"  {item.row.tool} {item.row.bits} {item.row.method}: {seconds:.1f} s, "
                  f"{peak:.0f} MiB{' (refused)' if refused else ''}", flush=True)
    return measured


def throughput_ratio(model: Path, reference: Path, pixels: np.ndarray,
                     config: dict | None = None, rounds: int = 7) -> float:
    """``model``'s images/s over ``reference``'s, runs alternating on the same batch."""
    sessions = [runtime.create_session(str(reference), "cpu"),
                runtime.create_session(str(model), "cpu", config=config)]
    for session in sessions:
        session.run(None, {"input": pixels})
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for session, spent in zip(sessions, times):
            start = time.perf_counter()
            session.run(None, {"input": pixels})
            spent.append(time.perf_counter() - start)
    return statistics.median(times[0]) / statistics.median(times[1])


def score(measured: list[Measured], fp32: evaluate.EvalResult, fp32_path: Path,
          evaluation: data.ImageSet, preprocessing, pixels: np.ndarray, accuracy: bool) -> None:
    for item in measured:
        if item.refused:
            continue
        if accuracy:
            result = evaluate.evaluate(str(item.path), evaluation, preprocessing, ep="cpu")
            item.top1, item.top5 = result.top1, result.top5
            item.agreement = result.agreement(fp32)
        item.speed_ratio = throughput_ratio(item.path, fp32_path, pixels)
        item.wbits = accounting.account(modelio.load_model(item.path)).equivalent_bits


# ---------------------------------------------------------------------------------------------
# Deployment forms


def deployment_rows(measured: list[Measured], fp32_path: Path, evaluation, preprocessing,
                    pixels: np.ndarray) -> list[list[str]]:
    """Accuracy, speed and size of each deployment form of the W8A8 and 4-bit models."""
    lines = []
    for item in _deployment_candidates(measured):
        forms = [("quantized file", item.path, None)]
        if item.row.tool == "onnxq" and item.row.bits != "W8A8":
            forms.append(("ORT folds weights at load", item.path, runtime.FOLD_WEIGHTS_AT_LOAD))
            for fold, label in ((False, "onnxq deploy"), (True, "onnxq deploy --fold-weights")):
                model = modelio.load_model(item.path)
                deploy(model, fold_weights=fold)
                path = item.path.with_name(f"{item.path.stem}{'-fold' if fold else '-deploy'}.onnx")
                modelio.save_model(model, path)
                forms.append((label, path, None))
        for label, path, config in forms:
            result = evaluate.evaluate(str(path), evaluation, preprocessing, ep="cpu", session_config=config)
            ratio = throughput_ratio(path, fp32_path, pixels, config)
            lines.append([item.row.tool, item.row.bits, item.row.method, label, f"{result.top1:.2f}",
                          f"{ratio:.2f}", f"{path.stat().st_size / 2**20:.1f}"])
            print("  " + " | ".join(lines[-1]), flush=True)
    return lines


def _deployment_candidates(measured: list[Measured]) -> list[Measured]:
    """ORT's 4-bit MinMax model; onnxq's fused W8A8, fused per-channel W4A8, most accurate
    W4A8 and weight-only models."""
    scored = [m for m in measured if m.top1 is not None]
    onnxq = [m for m in scored if m.row.tool == "onnxq"]
    chosen = [m for m in scored if m.row.tool == "ORT" and m.row.bits == "W4A8" and m.row.method == "MinMax"]
    chosen += [m for m in onnxq if m.row.bits == "W8A8" and m.row.method == "per-channel, minmax, fused"]
    chosen += [m for m in onnxq if m.row.bits == "W4A8" and m.row.method.endswith("fused")]
    best = max((m for m in onnxq if m.row.bits == "W4A8"), key=lambda m: m.top1, default=None)
    chosen += [best] if best is not None and best not in chosen else []
    chosen += [m for m in onnxq if m.row.bits == "W4A32"]
    return chosen


# ---------------------------------------------------------------------------------------------
# Streaming: peak memory with few and many calibration images


def streaming_rows(source: Path, images: data.ImageSet, workdir: Path) -> list[list[str]]:
    lines = []
    for observer in ("minmax", "mse"):
        peaks = []
        for count in (64, len(images)):
            config = dataclasses.replace(
                onnxq_config(8, "per-channel-symmetric", observer=observer, placement="fused"),
                calib_size=count,
            )
            _, seconds, peak = in_fresh_process(
                onnxq_job, str(source), str(workdir / f"streaming-{observer}-{count}.onnx"),
                images, config.to_dict(),
            )
            peaks.append(peak)
            lines.append([observer, str(count), f"{seconds:.1f}", f"{peak:.0f}", f"{peak / peaks[0]:.2f}"])
            print("  " + " | ".join(lines[-1]), flush=True)
    return lines


# ---------------------------------------------------------------------------------------------
# W8A8 over several calibration/evaluation splits


def w8a8_split_rows(source: Path, images: data.ImageSet, workdir: Path, splits: int) -> str:
    """ORT MinMax against onnxq's W8A8 default (and the old full-range grid), pooled over
    ``splits`` seeded 128/372 splits: top-1, agreement with fp32, paired differences with their
    standard errors, and quantize time as a ratio to ORT's in the same split."""
    preprocessing = modelio.get_preprocessing(modelio.load_model(source))
    rows = [ort_row("W8A8", "MinMax", 8),
            onnxq_row("W8A8", "CLI default (restricted, fused)", cli_default_w8a8()),
            onnxq_row("W8A8", "full range, fused (previous default)", full_range_w8a8())]
    correct = {row.method: [] for row in rows}
    agree = {row.method: [] for row in rows}
    fp32_correct, times = [], {row.method: [] for row in rows}
    evaluated: list[Path] = []  # the image of each pooled evaluation
    for seed in range(splits):
        calibration, evaluation = images.split(CALIBRATION_IMAGES, seed=seed)
        evaluated += evaluation.files
        labels = np.asarray(evaluation.labels)
        fp32 = evaluate.evaluate(str(source), evaluation, preprocessing, ep="cpu")
        fp32_predictions = np.asarray(fp32.predictions)
        fp32_correct.append(fp32_predictions == labels)
        for row in rows:
            path = workdir / f"split{seed}-{row.name}.onnx"
            refused, seconds, _ = in_fresh_process(row.job, str(source), str(path), calibration, *row.options)
            if refused:
                raise OnnxqError(f"{row.tool} {row.method} refused: {refused}")
            predictions = np.asarray(evaluate.evaluate(str(path), evaluation, preprocessing, ep="cpu").predictions)
            correct[row.method].append(predictions == labels)
            agree[row.method].append(predictions == fp32_predictions)
            times[row.method].append(seconds)
            print(f"  split {seed}: {row.tool} {row.method}: top-1 {100 * correct[row.method][-1].mean():.2f}, "
                  f"agreement {100 * agree[row.method][-1].mean():.1f}%, {seconds:.1f} s", flush=True)
    baseline = rows[0].method
    fp32_all = np.concatenate(fp32_correct)
    lines = [["fp32", "/", f"{100 * fp32_all.mean():.2f}", "100.0", "/", "/", "/"]]
    for row in rows:
        top1, agreement = np.concatenate(correct[row.method]), np.concatenate(agree[row.method])
        ratios = np.asarray(times[row.method]) / np.asarray(times[baseline])
        lines.append([
            row.tool, row.method, f"{100 * top1.mean():.2f}", f"{100 * agreement.mean():.2f}",
            _paired(agreement, np.concatenate(agree[baseline]), evaluated),
            _paired(top1, np.concatenate(correct[baseline]), evaluated),
            f"{np.median(ratios):.2f} ({ratios.min():.2f}–{ratios.max():.2f})",
        ])
    header = ["tool", "method", "top-1", "agree w/ fp32 %", "agreement − ORT (± SE)", "top-1 − ORT (± SE)",
              "time ×ORT MinMax (median, range)"]
    caption = (f"{splits} splits × {len(images) - CALIBRATION_IMAGES} evaluation images = "
               f"{len(fp32_all)} paired evaluations of {len(set(evaluated))} images.")
    return markdown(header, lines) + "\n\n" + caption


def _paired(values: np.ndarray, baseline: np.ndarray, images: list[Path]) -> str:
    """Mean paired difference in points with its standard error, ``+0.40 ± 0.21``; an image
    evaluated in several splits counts once."""
    return estimate(values.astype(float) - baseline.astype(float), images)


# ---------------------------------------------------------------------------------------------
# Output


def markdown(header: list[str], lines: list[list[str]]) -> str:
    rows = [header, ["---"] * len(header), *lines]
    return "\n".join("|" + "|".join(row) + "|" for row in rows)


def _number(value: float | None, digits: int = 2) -> str:
    return "/" if value is None else f"{value:.{digits}f}"


def results_table(measured: list[Measured], fp32: evaluate.EvalResult | None,
                  fp32_speed: float) -> str:
    baseline = next(m for m in measured if m.row.tool == "ORT" and m.row.method == "MinMax" and m.row.bits == "W8A8")
    lines = []
    if fp32 is not None:
        lines.append(["fp32", "W32A32", "/", f"{fp32.top1:.2f}", f"{fp32.top5:.2f}", "100.0", "32",
                      "/", "/", "/", f"1.00 ({fp32_speed:.0f}/s)"])
    for item in measured:
        row = item.row
        if item.refused:
            lines.append([row.tool, row.bits, row.method, f"refused: {item.refused}", *["/"] * 7])
            continue
        top1 = "/" if item.top1 is None or fp32 is None else f"{item.top1:.2f} ({item.top1 - fp32.top1:+.2f})"
        lines.append([
            row.tool, row.bits, row.method, top1, _number(item.top5), _number(item.agreement, 1),
            _number(item.wbits), f"{item.seconds / baseline.seconds:.2f}",
            f"{item.peak_mib / baseline.peak_mib:.2f}", _number(item.file_mib, 1),
            _number(item.speed_ratio),
        ])
    header = ["tool", "bits", "method", "top-1 (Δ fp32)", "top-5", "agree w/ fp32 %", "eq. wbit",
              "time ×ORT MinMax", "peak RSS ×ORT MinMax", "file MiB", "images/s ×fp32"]
    caption = (f"ORT MinMax W8A8 took {baseline.seconds:.1f} s and {baseline.peak_mib:.0f} MiB peak RSS "
               "in this run.")
    return markdown(header, lines) + "\n\n" + caption


def target_lines(measured: list[Measured], fp32: evaluate.EvalResult, deploy_lines: list[list[str]],
                 streaming: list[list[str]]) -> list[str]:
    """Each issue target, with the numbers of this run and met/missed."""
    scored = [m for m in measured if m.top1 is not None]
    baseline = next(m for m in measured if m.row.tool == "ORT" and m.row.method == "MinMax" and m.row.bits == "W8A8")
    ort_w8 = max((m for m in scored if m.row.tool == "ORT" and m.row.bits == "W8A8"), key=lambda m: m.top1)
    ours_w8 = max((m for m in scored if m.row.tool == "onnxq" and m.row.bits == "W8A8"), key=lambda m: m.top1)
    fused_w8 = next(m for m in scored if m.row.tool == "onnxq" and m.row.bits == "W8A8" and m.row.method == "per-channel, minmax, fused")
    w4 = [m for m in scored if m.row.tool == "onnxq" and m.row.bits == "W4A8" and m.wbits <= 4.3]
    best_w4 = max(w4, key=lambda m: m.top1, default=None)
    minmax = fused_w8
    mse = next(m for m in scored if m.row.tool == "onnxq" and m.row.bits == "W8A8" and m.row.method == "per-channel, mse, fused")
    mse_peak = max(float(line[3]) for line in streaming if line[0] == "mse")
    streaming_ratio = max(float(line[4]) for line in streaming)
    exact_forms = [line for line in deploy_lines if line[0] == "onnxq" and line[3] != "quantized file"]

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    lines = [
        f"- W8A8 top-1 ≥ ORT's best: onnxq {ours_w8.top1:.2f} ({ours_w8.row.method}, "
        f"{ours_w8.agreement:.1f}% agreement with fp32) vs ORT {ort_w8.top1:.2f} ({ort_w8.row.method}, "
        f"{ort_w8.agreement:.1f}%): {verdict(ours_w8.top1 >= ort_w8.top1)}",
        f"- W8A8 fused ≥ 1.8× fp32 images/s: {fused_w8.speed_ratio:.2f}×: {verdict(fused_w8.speed_ratio >= 1.8)}",
    ]
    if best_w4 is not None:
        loss = fp32.top1 - best_w4.top1
        lines.append(f"- W4A8 ≤ 4.3 eq. bits loses ≤ 1.0 top-1: {best_w4.row.method} at {best_w4.wbits:.2f} bits "
                     f"loses {loss:.2f}: {verdict(loss <= 1.0)}")
    else:
        lines.append("- W4A8 ≤ 4.3 eq. bits loses ≤ 1.0 top-1: no W4A8 row at ≤ 4.3 bits: **missed**")
    lines += [
        f"- minmax quantize time ≤ ORT MinMax: {minmax.seconds / baseline.seconds:.2f}×: "
        f"{verdict(minmax.seconds <= baseline.seconds)}",
        f"- MSE quantize time ≤ 2× ORT MinMax: {mse.seconds / baseline.seconds:.2f}×: "
        f"{verdict(mse.seconds <= 2 * baseline.seconds)}",
        f"- MSE peak RSS ≤ 1 GB: {max(mse.peak_mib, mse_peak):.0f} MiB: {verdict(max(mse.peak_mib, mse_peak) <= 1024)}",
        f"- peak RSS, many vs 64 calibration images ≤ 1.2×: {streaming_ratio:.2f}×: {verdict(streaming_ratio <= 1.2)}",
    ]
    for bits in ("W4A8", "W4A32"):
        forms = [line for line in exact_forms if line[1] == bits]
        fastest = max(forms, key=lambda line: float(line[5]), default=None)
        if fastest is not None:
            lines.append(
                f"- 4-bit deployment ≥ 0.8× fp32 with bit-exact weights, {bits}: {fastest[2]}, "
                f"{fastest[3]} (top-1 {fastest[4]}): {fastest[5]}× at {fastest[6]} MiB: "
                f"{verdict(float(fastest[5]) >= 0.8)}"
            )
    return lines


# ---------------------------------------------------------------------------------------------


def prepare(name: str, workdir: Path) -> Path:
    path = workdir / f"{name}.onnx"
    if not path.exists():
        export_model(name, path, None, name != "efficientnet_lite0", 0)
    return path


def benchmark_model(name: str, rows: list[Row], images: data.ImageSet, workdir: Path,
                    repeats: int, accuracy: bool) -> tuple[list[Measured], evaluate.EvalResult | None, float]:
    fp32_path = prepare(name, workdir)
    preprocessing = modelio.get_preprocessing(modelio.load_model(fp32_path))
    calibration, evaluation = images.split(CALIBRATION_IMAGES, seed=0)
    print(f"{name}: quantizing ({len(rows)} rows)", flush=True)
    measured = run_quantizers(rows, fp32_path, calibration, workdir, repeats)
    pixels = next(data.iter_batches(evaluation, preprocessing, THROUGHPUT_BATCH))[0]
    fp32 = evaluate.evaluate(str(fp32_path), evaluation, preprocessing, ep="cpu")
    print(f"{name}: scoring", flush=True)
    score(measured, fp32, fp32_path, evaluation, preprocessing, pixels, accuracy)
    return measured, fp32 if accuracy else None, fp32.images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--workdir", type=Path, default=REPO / "artifacts/bench_peers")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds of the fast quantizers")
    parser.add_argument("--quick", action="store_true", help="skip ORT's histogram calibrators and ResNet18")
    parser.add_argument("--w8a8-splits", type=int, metavar="N",
                        help="only compare W8A8 (ORT MinMax, onnxq's default) pooled over N splits")
    args = parser.parse_args()
    progress.set_quiet(True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    images = data.find_images(args.data)
    print(f"onnxruntime {onnxruntime.__version__}, {platform.machine()}, "
          f"{len(images)} images ({CALIBRATION_IMAGES} calibration)\n", flush=True)
    if args.w8a8_splits:
        table = w8a8_split_rows(prepare("efficientnet_lite0", args.workdir), images, args.workdir,
                                args.w8a8_splits)
        print("\n### W8A8 over several splits (EfficientNet-Lite0)\n")
        print(table)
        return

    prepare("efficientnet_lite0", args.workdir)
    measured, fp32, fp32_speed = benchmark_model(
        "efficientnet_lite0", effnet_rows(args.quick), images, args.workdir, args.repeats, True
    )
    fp32_path = args.workdir / "efficientnet_lite0.onnx"
    preprocessing = modelio.get_preprocessing(modelio.load_model(fp32_path))
    _, evaluation = images.split(CALIBRATION_IMAGES, seed=0)
    pixels = next(data.iter_batches(evaluation, preprocessing, THROUGHPUT_BATCH))[0]
    print("deployment forms", flush=True)
    deploy_lines = deployment_rows(measured, fp32_path, evaluation, preprocessing, pixels)
    print("streaming", flush=True)
    streaming = streaming_rows(fp32_path, images, args.workdir)
    resnet = None
    if not args.quick:
        resnet = benchmark_model("resnet18", resnet_rows(), images, args.workdir, args.repeats, False)

    print("\n### EfficientNet-Lite0\n")
    print(results_table(measured, fp32, fp32_speed))
    print("\n### Deployment forms (EfficientNet-Lite0)\n")
    print(markdown(["tool", "bits", "method", "form", "top-1", "images/s ×fp32", "file MiB"], deploy_lines))
    print("\n### Streaming calibration (EfficientNet-Lite0, W8A8)\n")
    print(markdown(["observer", "calibration images", "quantize s", "peak RSS MiB", "×64 images"], streaming))
    if resnet is not None:
        print("\n### ResNet18 (random weights: time, memory and speed only)\n")
        print(results_table(resnet[0], None, resnet[2]))
    print("\n### Targets\n")
    print("\n".join(target_lines(measured, fp32, deploy_lines, streaming)))
    record = {
        "onnxruntime": onnxruntime.__version__,
        "efficientnet_lite0": [_record(m) for m in measured],
        "resnet18": [_record(m) for m in resnet[0]] if resnet else [],
        "deployment": deploy_lines,
        "streaming": streaming,
        "fp32": {"top1": fp32.top1, "top5": fp32.top5, "images_per_second": fp32_speed},
    }
    (args.workdir / "results.json").write_text(json.dumps(record, indent=2) + "\n")


def _record(item: Measured) -> dict:
    fields = dataclasses.asdict(item)
    fields["row"] = {"tool": item.row.tool, "bits": item.row.bits, "method": item.row.method}
    fields["path"] = str(item.path)
    return fields


if __name__ == "__main__":
    main()
