"""Rounding benchmark: round-to-nearest against GPTQ and bias correction on EfficientNet-Lite0.

EfficientNet-Lite0 (real weights), calibrated on 128 of the 500 sample images and evaluated on
the other 372 (the seed-0 split). Rows: 4-bit weights per-channel and per-group gs 32/16/8
(affine, min/max observer), with 8-bit per-tensor features (W4A8) or float features (W4),
each with ``--rounding nearest|gptq`` and without/with ``--bias-correction``; then the mixed
configurations listed in ``MIXED``. Each quantization runs in a fresh process, so its wall
time and peak resident memory are its own. Equivalent bits are ``onnxq report``'s accounting
(Conv weights only). Prints a markdown table (paste it into BENCHMARKS.md).

    python tools/bench_rounding.py [--data ../shared/data/imagenet-sample] [--only gptq]
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
CALIBRATION = 128
METHODS = [("nearest", False), ("nearest", True), ("gptq", False), ("gptq", True)]


def config(scheme: str, gs: int | None, features: bool, rounding: str, bias: bool, keep=()) -> QuantConfig:
    return QuantConfig(
        weights=Scheme.parse(scheme, bits=4, group_size=gs),
        features=Scheme.parse("per-tensor-affine", bits=8) if features else None,
        calib_size=CALIBRATION,
        keep_8bit=tuple(keep),
        rounding=rounding,
        bias_correction=bias,
    )


def grid_rows() -> list[QuantConfig]:
    rows = []
    for features in (True, False):
        for scheme, gs in (("per-channel-affine", None), ("per-group-affine", 32),
                           ("per-group-affine", 16), ("per-group-affine", 8)):
            rows += [config(scheme, gs, features, r, b) for r, b in METHODS]
    return rows


#: Layers kept at 8 bits within 4.3 equivalent bits: the most sensitive per weight, ranked by
#: the KL divergence from fp32 on the 128 *calibration* images when only that layer is 4-bit
#: (GPTQ + bias correction, A8), taken greedily while the budget lasts.
SENSITIVE = (
    "_conv_stem", "_blocks.0._depthwise_conv", "_blocks.0._project_conv",
    "_blocks.1._expand_conv", "_blocks.1._depthwise_conv", "_blocks.1._project_conv",
    "_blocks.2._expand_conv", "_blocks.2._depthwise_conv", "_blocks.2._project_conv",
    "_blocks.3._expand_conv", "_blocks.3._depthwise_conv", "_blocks.3._project_conv",
    "_blocks.4._depthwise_conv", "_blocks.5._expand_conv", "_blocks.5._depthwise_conv",
    "_blocks.6._depthwise_conv", "_blocks.7._depthwise_conv",
)
#: 4-bit per-channel with the classifier (not counted) and a few small layers at 8 bits.
MIXED = [
    config("per-channel-affine", None, True, "gptq", True, ("last",)),
    config("per-channel-symmetric", None, True, "gptq", True, ("last",)),
    config("per-channel-affine", None, True, "nearest", True, ("first", "last", "depthwise3x3")),
    config("per-channel-affine", None, True, "gptq", True, ("first", "last", "depthwise3x3")),
    config("per-channel-affine", None, True, "nearest", True, ("last",) + SENSITIVE),
    config("per-channel-affine", None, True, "gptq", True, ("last",) + SENSITIVE),
    config("per-channel-affine", None, False, "gptq", True, ("last",) + SENSITIVE),
]


def quantize_job(source: str, destination: str, config_dict: dict, images: str) -> None:
    progress.set_quiet(True)
    quantize_file(source, destination, QuantConfig.from_dict(config_dict), data.find_images(images))


def describe(row: QuantConfig) -> list[str]:
    weights = row.weights
    keep = ",".join(_short(row.keep_8bit))
    return [
        f"{weights.name}" + (f" gs {weights.group_size}" if weights.group_size else ""),
        "8" if row.features else "float",
        row.rounding,
        "yes" if row.bias_correction else "no",
        keep or "-",
    ]


def _short(names: tuple[str, ...]) -> list[str]:
    """Layer lists as the table names them."""
    for group, label in ((SENSITIVE, f"{len(SENSITIVE)} sensitive"), (("depthwise3x3",), "dw3x3")):
        if set(group) <= set(names):
            names = tuple(n for n in names if n not in group) + (label,)
    return list(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--workdir", type=Path, default=REPO / "artifacts/bench_rounding")
    parser.add_argument("--only", choices=("grid", "mixed"), help="Run only these rows.")
    args = parser.parse_args()
    progress.set_quiet(True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    float_path = args.workdir / "efficientnet_lite0.onnx"
    if not float_path.exists():
        export_model("efficientnet_lite0", float_path)
    images = data.find_images(args.data)
    calibration, evaluation = images.split(CALIBRATION, seed=0)
    assert calibration == images.sample(CALIBRATION, 0)  # what quantize calibrates on
    preprocessing = modelio.get_preprocessing(modelio.load_model(float_path))
    fp32 = evaluate.evaluate(str(float_path), evaluation, preprocessing, ep="cpu")
    rows = {"grid": grid_rows(), "mixed": MIXED, None: grid_rows() + MIXED}[args.only]
    print(f"EfficientNet-Lite0, {len(calibration)} calibration / {len(evaluation)} evaluation "
          f"images, onnxruntime {onnxruntime.__version__}, {platform.machine()}\n")
    print("|weights (4-bit, minmax)|features|rounding|bias corr.|8-bit layers|top1|top5|"
          "Δtop1|equiv. bits|quantize s|peak MiB|")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"|fp32|float|-|-|-|{fp32.top1:.2f}|{fp32.top5:.2f}|0|32|-|-|")
    for index, row in enumerate(rows):
        output = args.workdir / f"row{index}.onnx"
        _, seconds, peak = in_fresh_process(
            quantize_job, str(float_path), str(output), row.to_dict(), str(args.data)
        )
        model = modelio.load_model(output)
        result = evaluate.evaluate(model, evaluation, preprocessing, ep="cpu")
        bits = accounting.account(model).equivalent_bits
        cells = describe(row) + [
            f"{result.top1:.2f}", f"{result.top5:.2f}", f"{result.top1 - fp32.top1:+.2f}",
            f"{bits:.3f}", f"{seconds:.0f}", f"{peak:.0f}",
        ]
        print("|" + "|".join(cells) + "|", flush=True)


if __name__ == "__main__":
    main()
