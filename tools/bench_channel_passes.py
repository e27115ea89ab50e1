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

A few images decide a row's change at 372 evaluation images, so ``--splits N`` repeats every row
on N calibration/evaluation splits (seeds 0..N-1) and pools them: top-1 and top-5 are over all
N × 372 evaluations, and the remark gives the paired change from the row without passes with
its standard error (per image, over the pooled evaluations) and the change on each split.
``--group-sizes`` limits the rows to some weight group sizes (0 = per-channel).

    python tools/bench_channel_passes.py [--data ../shared/data/imagenet-sample]
        [--workdir artifacts/bench_channel_passes] [--ablation] [--all-4bit] [--rounding gptq]
        [--splits 4] [--group-sizes 32,8]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from onnxq.models.export import export_model

from onnxq.base import progress
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.experiments.experiment import RowResult, run_row
from onnxq.experiments.tables import Reference, Row, markdown_table
from onnxq.io import data
from onnxq.pipeline import modelio
from onnxq.pipeline.pass_selection import Candidate, choose
from onnxq.reporting import evaluate
from onnxq.reporting.evaluate import EvalResult
from onnxq.reporting.statistics import standard_error

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


@dataclasses.dataclass(frozen=True)
class Run:
    """What the table keeps of one quantized and evaluated model (not the model itself)."""

    result: EvalResult
    pass_selection: list[Candidate]
    channel_sets: list

    @classmethod
    def of(cls, row: RowResult) -> Run:
        quantized = row.quantized
        return cls(row.result, quantized.pass_selection, quantized.channel_sets)


@dataclasses.dataclass
class PooledRow:
    """One table row: its pass setting and its runs, one per split."""

    name: str
    config: QuantConfig
    runs: list[Run] = dataclasses.field(default_factory=list)

    def result(self) -> EvalResult:
        """The runs' evaluations as one: accuracies over every pooled evaluation."""
        return pool([run.result for run in self.runs])


def pool(results: list[EvalResult]) -> EvalResult:
    images = sum(r.images for r in results)
    return EvalResult(
        images=images,
        top1=sum(r.top1 * r.images for r in results) / images,
        top5=sum(r.top5 * r.images for r in results) / images,
        images_per_second=0.0,
        provider=results[0].provider,
        predictions=tuple(p for r in results for p in r.predictions),
    )


def paired_change(row: EvalResult, reference: EvalResult, labels: np.ndarray,
                  images: list[Path]) -> tuple[float, float]:
    """Top-1 change from ``reference`` on the same images, and its standard error (points),
    an image evaluated in several splits counted once."""
    change = (np.array(row.predictions) == labels).astype(float)
    change -= np.array(reference.predictions) == labels
    return 100.0 * change.mean(), 100.0 * standard_error(change, images)


def remark(row: PooledRow, reference: PooledRow | None, fp32: EvalResult, labels: np.ndarray,
           images: list[Path]) -> str:
    """The passes, the change over the splits, agreement with fp32, and the sets changed."""
    result = row.result()
    agree = result.agreement(fp32)
    parts = [row.name or "no channel pass"]
    if reference is not None and len(row.runs) > 1:
        change, error = paired_change(result, reference.result(), labels, images)
        per_split = "/".join(
            f"{run.result.top1 - base.result.top1:+.1f}" for run, base in zip(row.runs, reference.runs)
        )
        parts.append(f"change {change:+.2f} ± {error:.2f} (splits {per_split})")
    parts.append(f"agree {agree:.1f}%")
    if row.runs[0].pass_selection:
        kept = [choose(run.pass_selection).label for run in row.runs]
        parts.append("selection kept " + "/".join(dict.fromkeys(kept)))
    sets = row.runs[0].channel_sets
    for field, verb, done in (("smooth", "smoothed", ("folded", "mul")),
                              ("reorder", "reordered", ("permuted",))):
        records = [getattr(s, field) for s in sets if getattr(s, field)]
        if records:
            changed = sum(record["status"] in done for record in records)
            parts.append(f"{changed}/{len(records)} sets {verb}")
    return "; ".join(parts)


def table_rows(args: argparse.Namespace, keep: tuple[str, ...]) -> list[PooledRow]:
    """Every row of the table, not yet run."""
    sizes = args.group_sizes
    rows = []
    for fbits in (8, 4):
        for scheme, gs in WEIGHTS:
            if sizes is not None and (gs or 0) not in sizes:
                continue
            config = base_config(fbits, scheme, gs, keep, args.rounding)
            ablate = args.ablation and (fbits, gs) in ((8, 32), (4, 8))
            for name, fields in PASSES + (ABLATION if ablate else []):
                rows.append(PooledRow(name, dataclasses.replace(config, **fields)))
    return rows


def group_sizes(text: str) -> set[int]:
    return {int(size) for size in text.split(",")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--workdir", type=Path, default=REPO / "artifacts/bench_channel_passes")
    parser.add_argument("--output", type=Path, help="markdown file (default: WORKDIR/table.md)")
    parser.add_argument("--ablation", action="store_true", help="also the other pass settings")
    parser.add_argument("--all-4bit", action="store_true", help="depthwise, first, last at 4 bits")
    parser.add_argument("--rounding", choices=("nearest", "gptq"), default="nearest")
    parser.add_argument("--splits", type=int, default=1, help="calibration/evaluation splits")
    parser.add_argument("--group-sizes", type=group_sizes, help="e.g. 32,8 (0 = per-channel)")
    args = parser.parse_args()
    progress.set_quiet(True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    float_path = args.workdir / f"{MODEL}.onnx"
    if not float_path.exists():
        export_model(MODEL, float_path)
    keep = () if args.all_4bit else ("first", "last", "depthwise")
    float_model = modelio.load_model(float_path)
    preprocessing = modelio.get_preprocessing(float_model)
    images = data.find_images(args.data)
    rows = table_rows(args, keep)
    fp32_runs, labels, evaluated = [], [], []
    for seed in range(args.splits):
        calibration, evaluation = images.split(CALIBRATION_IMAGES, seed=seed)
        fp32_runs.append(evaluate.evaluate(float_model, evaluation, preprocessing, ep="cpu"))
        labels.extend(evaluation.labels)
        evaluated.extend(evaluation.files)
        for row in rows:
            row.runs.append(Run.of(run_row(float_path, row.config, calibration, evaluation, ep="cpu")))
            print(f"split {seed}: {row.config.weights.name} gs {row.config.weights.group_size} "
                  f"A{row.config.features.bits} {row.name or '-'}: {row.runs[-1].result.top1:.3f}",
                  flush=True)
    fp32, label_array = pool(fp32_runs), np.array(labels)
    table = [Row.float_baseline(MODEL, fp32)]
    reference: PooledRow | None = None
    for row in rows:
        reference = None if row.name == "" else reference
        text = remark(row, reference, fp32, label_array, evaluated)
        base = Reference(reference.result().top1, reference.result().top5) if reference else None
        table.append(Row.from_config(MODEL, row.config, row.result(), text, reference=base))
        reference = reference or row
    output = args.output or args.workdir / "table.md"
    output.write_text(markdown_table(table) + "\n")
    print(markdown_table(table))
    print(f"\nwrote {output} ({args.splits} split(s) of {len(images)} images: "
          f"{CALIBRATION_IMAGES} calibration, the rest evaluation)")


if __name__ == "__main__":
    main()
