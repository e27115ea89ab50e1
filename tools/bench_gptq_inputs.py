"""GPTQ on float inputs against GPTQ on the inputs of the partly quantized network.

EfficientNet-Lite0 (real weights), W4A8 per-channel-affine, first/last 8-bit, GPTQ with bias
correction, 128 calibration images; ``--splits`` calibration/evaluation splits of the sample
images (seeds 0, 1, ...), every configuration on the same splits. For each configuration: top-1
agreement with fp32 pooled over the evaluation images of all splits, its paired difference
from ``float`` with a standard error (per image, the difference of the two agreement
indicators), and the median quantize time. Prints a markdown table::

    python tools/bench_gptq_inputs.py [--splits 4] [--stages 2 4 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from onnxq.base import progress
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.io import data
from onnxq.models.export import exported_model
from onnxq.pipeline import modelio
from onnxq.pipeline.quantize import quantize_file
from onnxq.reporting import evaluate
from onnxq.reporting.statistics import estimate

REPO = Path(__file__).resolve().parent.parent
CALIBRATION = 128


def config(inputs: str, stages: int) -> QuantConfig:
    return QuantConfig(
        weights=Scheme.parse("per-channel-affine", bits=4),
        features=Scheme.parse("per-tensor-affine", bits=8),
        calib_size=CALIBRATION,
        keep_8bit=("first", "last"),
        rounding="gptq",
        bias_correction=True,
        gptq_inputs=inputs,
        gptq_stages=stages,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxq-bench/gptq-inputs"))
    parser.add_argument("--splits", type=int, default=4)
    parser.add_argument("--stages", type=int, nargs="*", default=[2, 4, 8])
    args = parser.parse_args()
    progress.set_quiet(True)
    images = data.find_images(args.data)
    source = exported_model(args.workdir, "efficientnet_lite0")
    preprocessing = modelio.get_preprocessing(modelio.load_model(source))
    variants = [("float", 1)] + [("quantized", stages) for stages in args.stages]
    agree: dict[tuple[str, int], list[np.ndarray]] = {v: [] for v in variants}
    seconds: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
    evaluated: list[Path] = []  # the image of each pooled evaluation
    for split in range(args.splits):
        calibration, evaluation = images.split(CALIBRATION, seed=split)
        evaluated += evaluation.files
        reference = evaluate.evaluate(str(source), evaluation, preprocessing, ep="cpu")
        for inputs, stages in variants:
            output = args.workdir / f"lite0_{inputs}_{stages}.onnx"
            start = time.perf_counter()
            quantize_file(source, output, config(inputs, stages), calibration)
            seconds[inputs, stages].append(time.perf_counter() - start)
            result = evaluate.evaluate(str(output), evaluation, preprocessing, ep="cpu")
            same = np.asarray(result.predictions) == np.asarray(reference.predictions)
            agree[inputs, stages].append(same)
    baseline = np.concatenate(agree["float", 1])
    print(f"{args.splits} splits, {len(baseline)} evaluations of {len(set(evaluated))} images\n")
    print("| GPTQ inputs | stages | top-1 agreement with fp32 | − float inputs (± SE) "
          "| quantize s |")
    print("|---|---|---|---|---|")
    for variant in variants:
        inputs, stages = variant
        pooled = np.concatenate(agree[variant])
        difference = pooled.astype(float) - baseline
        delta = estimate(difference, evaluated) if inputs != "float" else ""
        shown = stages if inputs == "quantized" else ""
        agreement = f"{100 * pooled.mean():.2f} %"
        median = statistics.median(seconds[variant])
        print(f"| {inputs} | {shown} | {agreement} | {delta} | {median:.1f} |", flush=True)


if __name__ == "__main__":
    main()
