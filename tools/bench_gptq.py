"""GPTQ cost: round-to-nearest against GPTQ + bias correction, side by side.

W4A8 per-channel-affine weights with the first and last layers at 8 bits, 128 calibration
images, on EfficientNet-Lite0 (real weights) and ResNet18/ResNet50 (seeded random weights:
time and memory only). Each quantization runs in a fresh process (wall time and peak resident
memory its own), round-to-nearest and GPTQ alternating, ``--repeats`` times; the table gives
the medians and GPTQ's ratio to round-to-nearest. For EfficientNet-Lite0 it adds top-1
agreement with fp32 on the images not used for calibration. Prints a markdown table::

    python tools/bench_gptq.py [--repeats 2] [--models efficientnet_lite0 resnet18 resnet50]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from onnxq.models.export import exported_model

from onnxq.base import progress
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.experiments.experiment import in_fresh_process
from onnxq.io import data
from onnxq.pipeline import modelio
from onnxq.pipeline.quantize import quantize_file
from onnxq.reporting import evaluate

REPO = Path(__file__).resolve().parent.parent
CALIBRATION = 128
ROUNDINGS = (("nearest", False), ("gptq", True))


def config(rounding: str, bias_correction: bool) -> QuantConfig:
    return QuantConfig(
        weights=Scheme.parse("per-channel-affine", bits=4),
        features=Scheme.parse("per-tensor-affine", bits=8),
        calib_size=CALIBRATION,
        keep_8bit=("first", "last"),
        rounding=rounding,
        bias_correction=bias_correction,
    )


def quantize_job(source: str, destination: str, config_dict: dict, images: str) -> None:
    progress.set_quiet(True)
    quantize_file(source, destination, QuantConfig.from_dict(config_dict), data.find_images(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxq-bench/gptq"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="*",
                        default=["efficientnet_lite0", "resnet18", "resnet50"])
    args = parser.parse_args()
    progress.set_quiet(True)
    images = data.find_images(args.data)
    evaluation = images.split(CALIBRATION, seed=0)[1]
    print("| model | rounding | seconds | peak MiB | time ratio | memory ratio | top-1 agreement with fp32 |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        source = exported_model(args.workdir, name, random_weights=name != "efficientnet_lite0")
        runs: dict[str, list[tuple[float, float]]] = {r: [] for r, _ in ROUNDINGS}
        for _ in range(args.repeats):
            for rounding, bias in ROUNDINGS:
                output = args.workdir / f"{name}_{rounding}.onnx"
                job = (str(source), str(output), config(rounding, bias).to_dict(), str(args.data))
                _, seconds, peak = in_fresh_process(quantize_job, *job)
                runs[rounding].append((seconds, peak))
        medians = {r: tuple(statistics.median(v) for v in zip(*runs[r])) for r in runs}
        base_seconds, base_peak = medians["nearest"]
        for rounding, _ in ROUNDINGS:
            seconds, peak = medians[rounding]
            agreement = ""
            if name == "efficientnet_lite0":
                agreement = f"{_agreement(source, args.workdir / f'{name}_{rounding}.onnx', evaluation):.1f} %"
            print(f"| {name} | {rounding} | {seconds:.1f} | {peak:.0f} | {seconds / base_seconds:.2f}× "
                  f"| {peak / base_peak:.2f}× | {agreement} |", flush=True)


def _agreement(source: Path, quantized: Path, images: data.ImageSet) -> float:
    preprocessing = modelio.get_preprocessing(modelio.load_model(source))
    reference = evaluate.evaluate(str(source), images, preprocessing, ep="cpu")
    return reference.agreement(evaluate.evaluate(str(quantized), images, preprocessing, ep="cpu"))


if __name__ == "__main__":
    main()
