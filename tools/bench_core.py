"""Core quantization benchmark: EfficientNet-Lite0 on the 500 sample images.

Rows: fp32, W8A8, W4A8 per-channel and per-group gs 32/8 (minmax and MSE observers) and W4A4
per-group gs 8, with round-to-nearest weights; then the W4A8 rows again with GPTQ rounding and
bias correction (what the CLI does for 4-bit weights when given calibration images). Each
quantization runs in a fresh process so that its wall time and peak resident memory are its
own; every model is then evaluated on all 500 images (calibration uses a seeded sample of 128
of them). Prints a markdown table (paste it into BENCHMARKS.md).

    python tools/bench_core.py [--data ../shared/data/imagenet-sample] [--workdir artifacts/bench]
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import onnxruntime
from onnxq.models.export import export_model

from onnxq.base import progress
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.experiments.experiment import in_fresh_process
from onnxq.io import data
from onnxq.pipeline import modelio
from onnxq.pipeline.quantize import quantize_file
from onnxq.reporting import accounting, evaluate

REPO = Path(__file__).resolve().parent.parent


def config(wbits, wscheme, gs, wobs, fbits, fobs="minmax", gptq=False) -> QuantConfig:
    return QuantConfig(
        weights=Scheme.parse(wscheme, bits=wbits, group_size=gs, observer=wobs),
        features=Scheme.parse("per-tensor-affine", bits=fbits, observer=fobs),
        placement="inputs",  # the rows BENCHMARKS.md reports (the CLI's W8A8 default is fused)
        rounding="gptq" if gptq else "nearest",
        bias_correction=gptq,
    )


ROWS = [
    ("W8A8", config(8, "per-channel-symmetric", None, "minmax", 8)),
    ("W4A8", config(4, "per-channel-affine", None, "minmax", 8)),
    ("W4A8", config(4, "per-channel-affine", None, "mse", 8, "mse")),
    ("W4A8", config(4, "per-group-affine", 32, "minmax", 8)),
    ("W4A8", config(4, "per-group-affine", 32, "mse", 8, "mse")),
    ("W4A8", config(4, "per-group-affine", 8, "minmax", 8)),
    ("W4A8", config(4, "per-group-affine", 8, "mse", 8, "mse")),
    ("W4A4", config(4, "per-group-affine", 8, "mse", 4, "mse")),
    ("W4A8", config(4, "per-channel-affine", None, "minmax", 8, gptq=True)),
    ("W4A8", config(4, "per-group-affine", 32, "minmax", 8, gptq=True)),
    ("W4A8", config(4, "per-group-affine", 8, "minmax", 8, gptq=True)),
]


def quantize_job(source: str, destination: str, config_dict: dict, images: str) -> int:
    """Quantize in this (fresh) process; returns the number of calibration images used."""
    progress.set_quiet(True)
    result = quantize_file(
        source, destination, QuantConfig.from_dict(config_dict), data.find_images(images)
    )
    return result.calibration_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--workdir", type=Path, default=REPO / "artifacts/bench_core")
    args = parser.parse_args()
    progress.set_quiet(True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    float_path = args.workdir / "efficientnet_lite0.onnx"
    if not float_path.exists():
        export_model("efficientnet_lite0", float_path)
    images = data.find_images(args.data)
    preprocessing = modelio.get_preprocessing(modelio.load_model(float_path))
    fp32 = evaluate.evaluate(str(float_path), images, preprocessing, ep="cpu")
    print(f"EfficientNet-Lite0, {len(images)} images, onnxruntime {onnxruntime.__version__}, "
          f"{platform.processor() or platform.machine()}\n")
    print("|w_bit|f bit|w Qscheme|groupsize|observer (w/f)|rounding|top1 acc|top5 acc|"
          "Equivalent wbit|quantize s|peak RSS MiB|")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"|float32|float32| /|/|/|/|{fp32.top1:.3f}|{fp32.top5:.3f}|32|/|/|")
    for index, (label, row) in enumerate(ROWS):
        output = args.workdir / f"row{index}.onnx"
        _, seconds, peak = in_fresh_process(
            quantize_job, str(float_path), str(output), row.to_dict(), str(args.data)
        )
        result = evaluate.evaluate(str(output), images, preprocessing, ep="cpu")
        weights, features = row.weights, row.features
        rounding = "gptq + bias corr." if row.rounding == "gptq" else "nearest"
        bits = accounting.account(modelio.load_model(output)).equivalent_bits
        print(
            f"|{weights.bits}|{features.bits}|{weights.name}|{weights.group_size or '/'}|"
            f"{weights.observer.value}/{features.observer.value}|{rounding}|{result.top1:.3f}|"
            f"{result.top5:.3f}|{bits:.2f}|{seconds:.1f}|{peak:.0f}|",
            flush=True,
        )


if __name__ == "__main__":
    main()
