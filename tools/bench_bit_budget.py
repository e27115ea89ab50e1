"""``--bit-budget`` on EfficientNet-Lite0: layers kept at 8 bits by their measured sensitivity.

For each split (128 calibration images, the other sample images for evaluation) and each
equivalent-bits budget, the model is quantized as ``bench_reconstruct.py``'s W4A8 (per-channel
-affine 4-bit weights, GPTQ with bias correction, 8-bit min/max features, first and last layers
at 8 bits) with ``--bit-budget``: onnxq measures every 4-bit Conv alone on the calibration images
and keeps the most sensitive per added bit at 8 bits while the budget allows
(``onnxq.pipeline.bit_allocation``). Each model is evaluated beside fp32 on the evaluation
images, paired with the hand-chosen W4A8-dwhr (``--keep-8bit
first,last,depthwise3x3,highres``, 4.278 bits). Prints the most sensitive layers of the first
split and a markdown table pooled over the splits::

    python tools/bench_bit_budget.py [--splits 3] [--budgets 4.278 4.3 4.5 5.0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from onnxq.models.export import exported_model

from onnxq.base import progress
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.io import data
from onnxq.pipeline import modelio, pass_selection
from onnxq.pipeline.quantize import quantize
from onnxq.reporting import accounting, evaluate
from onnxq.reporting.statistics import estimate

REPO = Path(__file__).resolve().parent.parent
CALIBRATION = 128
WEIGHTS = Scheme.parse("per-channel-affine", bits=4)
FEATURES = Scheme.parse("per-tensor-affine", bits=8, observer="minmax")
HAND_CHOSEN = "depthwise3x3,highres"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxq-bench/bit-budget"))
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--budgets", type=float, nargs="*", default=[4.278, 4.3, 4.5, 5.0])
    args = parser.parse_args()
    progress.set_quiet(True)
    images = data.find_images(args.data)
    source = exported_model(args.workdir, "efficientnet_lite0")
    preprocessing = modelio.get_preprocessing(modelio.load_model(source))
    rows: dict[str, list[dict]] = {}
    for seed in range(args.splits):
        calibration, evaluation = images.split(CALIBRATION, seed=seed)
        configs = {HAND_CHOSEN: _config(("depthwise3x3", "highres"), None)}
        configs.update({f"--bit-budget {b:g}": _config((), b) for b in args.budgets})
        for label, config in configs.items():
            result = quantize(modelio.load_model(source), config, calibration, preprocessing)
            record = _evaluate(source, result, evaluation, preprocessing)
            rows.setdefault(label, []).append(record)
            if seed == 0 and label == f"--bit-budget {args.budgets[0]:g}":
                _print_sensitivities(result.allocation)
            print(f"split {seed}, {label}: {record['bits']:.3f} bits, {record['kept']} layers "
                  f"kept, KL {np.mean(record['kl']):.4f}, {record['seconds']:.0f} s", flush=True)
    _table(rows)


def _config(keep: tuple[str, ...], budget: float | None) -> QuantConfig:
    return QuantConfig(weights=WEIGHTS, features=FEATURES, calib_size=CALIBRATION,
                       keep_8bit=("first", "last") + keep, bit_budget=budget, rounding="gptq")


def _evaluate(source, result, evaluation, preprocessing) -> dict:
    batches = list(evaluate.paired_logits(str(source), result.model, evaluation, preprocessing,
                                          batch_size=32, ep="cpu"))
    fp32 = np.concatenate([a.argmax(axis=1) for a, _ in batches])
    predictions = np.concatenate([b.argmax(axis=1) for _, b in batches])
    labels = np.asarray(evaluation.labels)
    kept = len(result.allocation.kept) if result.allocation is not None else 0
    return {"bits": accounting.account(result.model).equivalent_bits, "kept": kept,
            "seconds": result.seconds,
            "correct": predictions == labels, "fp32_correct": fp32 == labels,
            "agree": predictions == fp32, "images": evaluation.files,
            "kl": np.concatenate([pass_selection.kl_per_image(a, b) for a, b in batches])}


def _print_sensitivities(allocation) -> None:
    print("Most sensitive layers, split 0 (KL divergence from fp32 with only that layer at 4 "
          "bits; * kept at the first budget):")
    for layer in sorted(allocation.layers, key=lambda layer: -layer.divergence)[:12]:
        print(f"  {layer.node}: {layer.divergence:.4f}, {layer.added_bits} bits"
              f"{' *' if layer.kept else ''}")
    print(flush=True)


def _table(rows: dict[str, list[dict]]) -> None:
    pooled = {label: {key: np.concatenate([np.asarray(r[key], float) for r in records])
                      for key in ("correct", "fp32_correct", "agree", "kl")}
              for label, records in rows.items()}
    hand = pooled[HAND_CHOSEN]
    fp32 = hand["fp32_correct"]
    images = [file for record in rows[HAND_CHOSEN] for file in record["images"]]
    print(f"\n{len(fp32)} paired evaluations of {len(set(images))} images, "
          f"fp32 top-1 {100 * fp32.mean():.2f} %, GPTQ\n")
    print("| 8-bit layers besides first and last | equivalent bits | added layers | top-1 "
          "| − fp32 (± SE) | agreement (± SE) | KL from fp32 (± SE) "
          "| KL − depthwise3x3,highres (± SE) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, row in pooled.items():
        bits = np.mean([r["bits"] for r in rows[label]])
        kept = np.mean([r["kept"] for r in rows[label]])
        versus = "" if row is hand else estimate(row["kl"] - hand["kl"], images, 1, 4)
        print(f"| {label} | {bits:.3f} | {kept:.0f} | {100 * row['correct'].mean():.2f} % "
              f"| {estimate(row['correct'] - fp32, images, 100, 2)} "
              f"| {estimate(row['agree'], images, 100, 2, signed=False)} % "
              f"| {estimate(row['kl'], images, 1, 4, signed=False)} | {versus} |", flush=True)


if __name__ == "__main__":
    main()
