"""Restricted against full-range symmetric weight grids on EfficientNet-Lite0 (real weights).

Weight-only 4-bit round-to-nearest isolates the grid: ``full`` (``scale = 2·absmax/15``, codes
−8..7) clips the positive extreme of every group by half a step, ``restricted``
(``scale = absmax/7``, codes ±7) represents both extremes. The smaller a group, the more of its
weights are an extreme: at gs 1 (one input channel × the 3×3 or 1×1 kernel) the full grid
shrinks the largest positive weight of every group. The same 372 images (the seeded split of
bench_peers) score every model, paired with fp32. Prints markdown for BENCHMARKS.md.

    python tools/bench_symmetric.py [--data DIR] [--workdir artifacts/bench_symmetric]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from onnxq.models.export import export_model

from onnxq.base import progress
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.io import data
from onnxq.pipeline import modelio
from onnxq.pipeline.quantize import quantize
from onnxq.reporting import evaluate
from onnxq.reporting.statistics import estimate

REPO = Path(__file__).resolve().parent.parent
CALIBRATION_IMAGES = 128
#: (scheme, group size, bits) of the weight-only rows.
GRIDS = (
    ("per-channel-symmetric", None, 4),
    ("per-group-symmetric", 32, 4),
    ("per-group-symmetric", 8, 4),
    ("per-group-symmetric", 1, 4),
    ("per-channel-symmetric", None, 8),
)


def config(scheme: str, gs: int | None, bits: int, symmetric_range: str) -> QuantConfig:
    weights = Scheme.parse(scheme, bits=bits, group_size=gs, symmetric_range=symmetric_range)
    return QuantConfig(weights=weights, rounding="nearest")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--workdir", type=Path, default=REPO / "artifacts/bench_symmetric")
    args = parser.parse_args()
    progress.set_quiet(True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    source = args.workdir / "efficientnet_lite0.onnx"
    if not source.exists():
        export_model("efficientnet_lite0", source)
    _, evaluation = data.find_images(args.data).split(CALIBRATION_IMAGES, seed=0)
    preprocessing = modelio.get_preprocessing(modelio.load_model(source))
    fp32 = evaluate.evaluate(str(source), evaluation, preprocessing, ep="cpu")
    lines = ["|weights|gs|full: top-1|full: agree w/ fp32|restricted: top-1|restricted: agree w/ fp32|"
             "restricted − full (top-1, ± paired SE)|", "|---|---|---|---|---|---|---|",
             f"|fp32|/|{fp32.top1:.2f}|100.0|{fp32.top1:.2f}|100.0|/|"]
    labels = np.asarray(evaluation.labels)
    for scheme, gs, bits in GRIDS:
        cells, correct = [], {}
        for symmetric_range in ("full", "restricted"):
            model = modelio.load_model(source)
            quantize(model, config(scheme, gs, bits, symmetric_range))
            result = evaluate.evaluate(model, evaluation, preprocessing, ep="cpu")
            correct[symmetric_range] = np.asarray(result.predictions) == labels
            cells += [f"{result.top1:.2f}", f"{fp32.agreement(result):.1f}"]
            print(f"  {bits}-bit {scheme} gs {gs} {symmetric_range}: {result.top1:.2f}", flush=True)
        difference = correct["restricted"].astype(float) - correct["full"]
        change = estimate(difference)
        lines.append(f"|W{bits} {scheme}|{gs or '/'}|" + "|".join(cells) + f"|{change}|")
    print(f"\nEfficientNet-Lite0, weight-only, round to nearest, {len(evaluation)} images\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
