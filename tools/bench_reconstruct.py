"""Block reconstruction against GPTQ and round-to-nearest on EfficientNet-Lite0, real images.

Two bit budgets: W4A8 (per-channel-affine weights, per-tensor-affine 8-bit features, first and
last layers at 8 bits) and W4A4 (4-bit per-tensor features; first and last layers at 8 bits).
For each, three roundings on the same splits: nearest, gptq (with bias correction, the
default), reconstruct (``--reconstruct-iters``). 128 calibration images per split, the other
sample images for evaluation (seeds 0, 1, ...). Per row, pooled over the splits: top-1, its
paired difference from fp32 on the same images with a standard error, top-1 agreement with
fp32 with a standard error, and the median quantize time as a ratio to round-to-nearest's.
Prints a markdown table::

    python tools/bench_reconstruct.py [--splits 3] [--iters 1000] [--budgets W4A8 W4A4]

``--cost MODEL ...`` measures cost instead: W4A8 quantize time and peak memory of each rounding
in a fresh process (ResNets with seeded random weights), ``--iters`` steps per block::

    python tools/bench_reconstruct.py --cost resnet18 resnet50 --iters 100
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from onnxq.base import progress
from onnxq.base.constants import RECONSTRUCT_ITERATIONS
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.experiments.experiment import in_fresh_process
from onnxq.io import data
from onnxq.models.export import exported_model
from onnxq.pipeline import modelio
from onnxq.pipeline.quantize import quantize_file
from onnxq.reporting import evaluate

REPO = Path(__file__).resolve().parent.parent
CALIBRATION = 128
FEATURE_BITS = {"W4A8": 8, "W4A4": 4}
ROUNDINGS = ("nearest", "gptq", "reconstruct")


def config(budget: str, rounding: str, iterations: int) -> QuantConfig:
    return QuantConfig(
        weights=Scheme.parse("per-channel-affine", bits=4),
        features=Scheme.parse("per-tensor-affine", bits=FEATURE_BITS[budget]),
        calib_size=CALIBRATION,
        keep_8bit=("first", "last"),
        rounding=rounding,
        reconstruct_iterations=iterations,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxq-bench/reconstruct"))
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--iters", type=int, default=RECONSTRUCT_ITERATIONS)
    parser.add_argument("--budgets", nargs="*", default=list(FEATURE_BITS), choices=FEATURE_BITS)
    parser.add_argument("--roundings", nargs="*", default=list(ROUNDINGS), choices=ROUNDINGS)
    parser.add_argument("--cost", nargs="*", metavar="MODEL",
                        help="time and memory on these models instead of accuracy")
    args = parser.parse_args()
    progress.set_quiet(True)
    if args.cost:
        _cost(args)
        return
    images = data.find_images(args.data)
    source = exported_model(args.workdir, "efficientnet_lite0")
    preprocessing = modelio.get_preprocessing(modelio.load_model(source))
    rows = [(budget, rounding) for budget in args.budgets for rounding in args.roundings]
    correct: dict[tuple[str, str], list[np.ndarray]] = {row: [] for row in rows}
    agree: dict[tuple[str, str], list[np.ndarray]] = {row: [] for row in rows}
    seconds: dict[tuple[str, str], list[float]] = {row: [] for row in rows}
    fp32_correct = []
    for split in range(args.splits):
        calibration, evaluation = images.split(CALIBRATION, seed=split)
        reference = evaluate.evaluate(str(source), evaluation, preprocessing, ep="cpu")
        labels = np.asarray(evaluation.labels)
        fp32_correct.append(np.asarray(reference.predictions) == labels)
        for row in rows:
            output = args.workdir / f"lite0_{row[0]}_{row[1]}.onnx"
            start = time.perf_counter()
            quantized = quantize_file(source, output, config(*row, args.iters), calibration)
            seconds[row].append(time.perf_counter() - start)
            kept = [block for block in quantized.blocks if block.kept]
            if quantized.blocks:
                print(f"  {len(kept)}/{len(quantized.blocks)} blocks kept; output error "
                      + ", ".join(f"{b.start_error:.3f}→{b.error:.3f}" for b in quantized.blocks))
            result = evaluate.evaluate(str(output), evaluation, preprocessing, ep="cpu")
            predictions = np.asarray(result.predictions)
            correct[row].append(predictions == labels)
            agree[row].append(predictions == np.asarray(reference.predictions))
            print(f"split {split} {row}: {seconds[row][-1]:.0f} s, top-1 agreement "
                  f"{100 * agree[row][-1].mean():.1f} %", flush=True)
        _table(rows, correct, agree, seconds, np.concatenate(fp32_correct), split + 1, args)


def quantize_job(source: str, destination: str, config_dict: dict, images: str) -> None:
    progress.set_quiet(True)
    config = QuantConfig.from_dict(config_dict)
    quantize_file(source, destination, config, data.find_images(images), ep="cpu")


def _cost(args) -> None:
    print(f"W4A8, {CALIBRATION} calibration images, {args.iters} steps per block\n")
    print("| model | rounding | seconds | peak MiB | time ratio | memory ratio |")
    print("|---|---|---|---|---|---|")
    for name in args.cost:
        source = exported_model(args.workdir, name, random_weights=name != "efficientnet_lite0")
        measured = {}
        for rounding in args.roundings:
            settings = config("W4A8", rounding, args.iters).to_dict()
            output = args.workdir / f"{name}_{rounding}.onnx"
            job = (str(source), str(output), settings, str(args.data))
            _, seconds, peak = in_fresh_process(quantize_job, *job)
            measured[rounding] = seconds, peak
        base_seconds, base_peak = measured.get("nearest", measured[args.roundings[0]])
        for rounding, (seconds, peak) in measured.items():
            print(f"| {name} | {rounding} | {seconds:.0f} | {peak:.0f} "
                  f"| {seconds / base_seconds:.1f}× | {peak / base_peak:.2f}× |", flush=True)


def _table(rows, correct, agree, seconds, fp32, splits, args) -> None:
    """The pooled table of the first ``splits`` splits (printed after each one)."""
    print(f"\n{splits} splits, {len(fp32)} evaluation images in all, "
          f"fp32 top-1 {100 * fp32.mean():.2f} %, {args.iters} steps per block\n")
    print("| budget | rounding | top-1 | − fp32 (± SE) | agreement with fp32 (± SE) "
          "| quantize s | time ratio |")
    print("|---|---|---|---|---|---|---|")
    for budget, rounding in rows:
        hits = np.concatenate(correct[budget, rounding])
        same = np.concatenate(agree[budget, rounding])
        drop = hits.astype(float) - fp32
        median = statistics.median(seconds[budget, rounding])
        base = statistics.median(seconds.get((budget, "nearest"), [median]))
        print(f"| {budget} | {rounding} | {100 * hits.mean():.2f} % "
              f"| {100 * drop.mean():+.2f} ± {100 * _error(drop):.2f} "
              f"| {100 * same.mean():.2f} ± {100 * _error(same):.2f} % "
              f"| {median:.0f} | {median / base:.1f}× |", flush=True)


def _error(values: np.ndarray) -> float:
    return float(np.asarray(values, float).std(ddof=1) / np.sqrt(len(values)))


if __name__ == "__main__":
    main()
