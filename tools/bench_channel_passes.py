"""Smooth and reorder on EfficientNet-Lite0: top-1 with and without the channel passes.

EfficientNet-Lite0 (real weights) is exported once into the work folder. The 500 sample images
are split (seed 0) into 128 calibration and 372 evaluation images. Rows: W4A8 and W4A4, weights
per-channel-affine and per-group-affine gs 32 / gs 8 (MSE observer), features per-tensor-affine
(min/max at 8 bits, MSE at 4 bits); each without the passes, with ``--smooth``, with
``--reorder auto`` and with both, at their defaults. Depthwise convolutions and the first and
last layers stay at 8 bits (``--all-4bit`` quantizes them too). Weights are rounded to nearest
(``--rounding gptq`` uses GPTQ with bias correction, the CLI's 4-bit default). Each pass row
shows its change from the row without passes; the remark adds how often the top-1 class agrees
with fp32's and how many channel sets each pass changed. ``--ablation`` adds rows for the other
settings of each pass on the W4A8 gs 32 and W4A4 gs 8 rows. Writes the markdown table to
``--output``.

    python tools/bench_channel_passes.py [--data ../shared/data/imagenet-sample]
        [--workdir artifacts/bench_channel_passes] [--ablation] [--all-4bit] [--rounding gptq]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from onnxq import data, evaluate, modelio, progress
from onnxq.config import QuantConfig
from onnxq.experiment import RowResult, run_row
from onnxq.models.export import export_model
from onnxq.pass_selection import choose
from onnxq.schemes import Scheme
from onnxq.tables import Reference, Row, markdown_table

REPO = Path(__file__).resolve().parent.parent
MODEL = "efficientnet_lite0"
CALIBRATION_IMAGES = 128
WEIGHTS = [("per-channel-affine", None), ("per-group-affine", 32), ("per-group-affine", 8)]
PASSES = [
    ("", {}),
    ("smooth", {"smooth_alpha": "auto"}),
    ("reorder", {"reorder": "auto"}),
    ("smooth + reorder", {"smooth_alpha": "auto", "reorder": "auto"}),
]
ABLATION = [
    ("smooth α=0.5", {"smooth_alpha": 0.5}),
    ("smooth α=0.5 act-scale absmax*10", {"smooth_alpha": 0.5, "act_scale": "absmax*10"}),
    ("smooth α=0.5 act-scale absmax/10", {"smooth_alpha": 0.5, "act_scale": "absmax/10"}),
    ("smooth --smooth-mul", {"smooth_alpha": "auto", "smooth_mul": True}),
    ("reorder absmax", {"reorder": "absmax"}),
    ("reorder max", {"reorder": "max"}),
    ("reorder weight-absmax", {"reorder": "weight-absmax"}),
    ("reorder weight-max", {"reorder": "weight-max"}),
]


def base_config(
    fbits: int, scheme: str, gs: int | None, keep: tuple[str, ...], rounding: str
) -> QuantConfig:
    feature_observer = "minmax" if fbits == 8 else "mse"
    return QuantConfig(
        weights=Scheme.parse(scheme, bits=4, group_size=gs, observer="mse"),
        features=Scheme.parse("per-tensor-affine", bits=fbits, observer=feature_observer),
        calib_size=CALIBRATION_IMAGES,
        keep_8bit=keep,
        rounding=rounding,
        bias_correction=rounding == "gptq",
    )


def remark(name: str, row: RowResult, fp32: tuple[int, ...]) -> str:
    """The passes, top-1 agreement with fp32, and how many sets each pass changed."""
    agree = 100.0 * sum(a == b for a, b in zip(row.result.predictions, fp32)) / len(fp32)
    parts = [name or "no channel pass", f"agree {agree:.1f}%"]
    if row.quantized and row.quantized.pass_selection:
        parts.append(f"selection kept {choose(row.quantized.pass_selection).label}")
    sets = row.quantized.channel_sets if row.quantized else []
    for field, verb, done in (("smooth", "smoothed", ("folded", "mul")),
                              ("reorder", "reordered", ("permuted",))):
        records = [getattr(s, field) for s in sets if getattr(s, field)]
        if records:
            changed = sum(record["status"] in done for record in records)
            parts.append(f"{changed}/{len(records)} sets {verb}")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--workdir", type=Path, default=REPO / "artifacts/bench_channel_passes")
    parser.add_argument("--output", type=Path, help="markdown file (default: WORKDIR/table.md)")
    parser.add_argument("--ablation", action="store_true", help="also the other pass settings")
    parser.add_argument("--all-4bit", action="store_true", help="depthwise, first, last at 4 bits")
    parser.add_argument("--rounding", choices=("nearest", "gptq"), default="nearest")
    args = parser.parse_args()
    progress.set_quiet(True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    float_path = args.workdir / f"{MODEL}.onnx"
    if not float_path.exists():
        export_model(MODEL, float_path)
    calibration, evaluation = data.find_images(args.data).split(CALIBRATION_IMAGES, seed=0)
    keep = () if args.all_4bit else ("first", "last", "depthwise")

    float_model = modelio.load_model(float_path)
    preprocessing = modelio.get_preprocessing(float_model)
    fp32 = evaluate.evaluate(float_model, evaluation, preprocessing, ep="cpu")
    rows = [Row.float_baseline(MODEL, fp32)]
    print(markdown_table(rows), flush=True)
    for fbits in (8, 4):
        for scheme, gs in WEIGHTS:
            config = base_config(fbits, scheme, gs, keep, args.rounding)
            ablate = args.ablation and (fbits, gs) in ((8, 32), (4, 8))
            reference = None
            for name, fields in PASSES + (ABLATION if ablate else []):
                variant = dataclasses.replace(config, **fields)
                row = run_row(float_path, variant, calibration, evaluation, ep="cpu")
                text = remark(name, row, fp32.predictions)
                rows.append(Row.from_config(MODEL, variant, row.result, text, reference=reference))
                reference = reference or Reference(row.result.top1, row.result.top5)
                print(markdown_table(rows[-1:], header=False), flush=True)
    output = args.output or args.workdir / "table.md"
    output.write_text(markdown_table(rows) + "\n")
    print(f"\nwrote {output} ({len(evaluation)} evaluation images, {len(calibration)} calibration)")


if __name__ == "__main__":
    main()
