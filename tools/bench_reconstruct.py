"""Block reconstruction against GPTQ and round-to-nearest on EfficientNet-Lite0, real images.

Two bit budgets: W4A8 (per-channel-affine weights, per-tensor-affine 8-bit features, first and
last layers at 8 bits) and W4A4 (4-bit per-tensor features; first and last layers at 8 bits),
and variants on request: W4A8-dw (the depthwise 3×3 layers at 8 bits too, 4.26 equivalent bits,
the seed's best use of its 4.3-bit budget), W4A8-dwhr (those and the ``highres`` layers, the
stem and the first stage at 112×112 and 56×56, 4.28 bits), W4A8-4.3 (``--bit-budget 4.3``: the
layers whose 4-bit weights alone move the output most per added bit), W4A4-mse (MSE feature observers, the
command line's default under 8 bits), W4A4-hr (W4A4-mse with the ``highres`` layers' weights
and input features at 8 bits, 4.25 bits) and W8A4-mse (W4A4-mse with 8-bit weights: what the
4-bit features cost alone). Each row records the model's equivalent weight bits.
For each, three roundings on the same splits: nearest, gptq (with bias correction, the default),
reconstruct (``--reconstruct-iters``). 128 calibration images per split, the other sample images
for evaluation (seeds 0, 1, ...). Per row, pooled over the splits: top-1, its paired difference
from fp32 on the same images with a standard error, top-1 agreement with fp32 with a standard
error, its paired difference from GPTQ's agreement, the mean KL divergence of the softmax from
fp32's (per image, from the pass that gives the predictions; far less noisy than agreement) and
its paired difference from GPTQ's, and the median quantize time as a ratio to
round-to-nearest's. Prints a markdown table::

    python tools/bench_reconstruct.py [--splits 3] [--iters 1000] [--budgets W4A8 W4A4]

Each split's predictions are recorded under ``--workdir``/records; ``--seeds 1`` runs one split
alone, and ``--reuse`` takes the recorded splits instead of running them again (and runs the
rows not recorded yet), so splits run at different times pool into one table (``--seeds 0 1 2
--reuse``).

``--reconstruct-seeds 0 1 2`` runs each reconstruct row with these seeds of the optimisation's
random batches, crops and drop masks (the same splits, the same GPTQ start): the table takes the
first seed, and a second table gives each run's means and their spread between seeds, the
optimisation's own noise, which the paired standard errors over images do not contain.

``--cost MODEL ...`` measures cost instead: W4A8 quantize time and peak memory of each rounding
in a fresh process (ResNets with seeded random weights), ``--iters`` steps per block::

    python tools/bench_reconstruct.py --cost resnet18 resnet50 --iters 100
"""

from __future__ import annotations

import argparse
import json
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
from onnxq.pipeline import modelio, pass_selection
from onnxq.pipeline.quantize import quantize_file
from onnxq.reporting import accounting, evaluate
from onnxq.reporting.statistics import estimate

REPO = Path(__file__).resolve().parent.parent
CALIBRATION = 128
#: Budget → (feature bits, feature observer, ``--keep-8bit`` layers besides the first and last:
#: the depthwise 3×3 layers (9 weights per channel) are the seed's best use of its 4.3-bit budget;
#: ``--bit-budget``, or None).
BUDGETS = {
    "W4A8": (8, "minmax", (), None), "W4A4": (4, "minmax", (), None),
    "W4A8-dw": (8, "minmax", ("depthwise3x3",), None),
    "W4A8-dwhr": (8, "minmax", ("depthwise3x3", "highres"), None),
    "W4A8-4.3": (8, "minmax", (), 4.3),
    "W4A4-mse": (4, "mse", (), None), "W4A4-hr": (4, "mse", ("highres",), None),
    "W8A4-mse": (4, "mse", (), None),
}
#: Weight bits of a budget whose name does not start with W4.
WEIGHT_BITS = {"W8A4-mse": 8}
ROUNDINGS = ("nearest", "gptq", "reconstruct")


def config(budget: str, rounding: str, iterations: int,
           reconstruct_seed: int | None = None) -> QuantConfig:
    feature_bits, observer, also_8bit, bit_budget = BUDGETS[budget]
    keep = ("first", "last") + also_8bit
    return QuantConfig(
        weights=Scheme.parse("per-channel-affine", bits=WEIGHT_BITS.get(budget, 4)),
        features=Scheme.parse("per-tensor-affine", bits=feature_bits, observer=observer),
        calib_size=CALIBRATION,
        keep_8bit=keep,
        bit_budget=bit_budget,
        rounding=rounding,
        reconstruct_iterations=iterations,
        reconstruct_seed=reconstruct_seed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxq-bench/reconstruct"))
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="*", help="these splits (default: 0 … splits−1)")
    parser.add_argument("--reuse", action="store_true",
                        help="take the recorded splits; run only those not recorded")
    parser.add_argument("--iters", type=int, default=RECONSTRUCT_ITERATIONS)
    parser.add_argument("--budgets", nargs="*", default=["W4A8", "W4A4"], choices=BUDGETS)
    parser.add_argument("--roundings", nargs="*", default=list(ROUNDINGS), choices=ROUNDINGS)
    parser.add_argument("--reconstruct-seeds", type=int, nargs="+", default=[None],
                        help="optimisation seeds of the reconstruct rows (default: 0)")
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
    seeds = args.seeds if args.seeds is not None else list(range(args.splits))
    records: dict[tuple[str, str], list[dict]] = {row: [] for row in rows}
    runs: dict[tuple[str, int], list[tuple[int, dict]]] = {}  # (budget, split) → seeded runs
    evaluated: list[Path] = []  # the image of each pooled evaluation, for the standard errors
    for count, seed in enumerate(seeds, 1):
        calibration, evaluation = images.split(CALIBRATION, seed=seed)
        evaluated += evaluation.files
        for row in rows:
            rec_seeds = args.reconstruct_seeds if row[1] == "reconstruct" else [None]
            for rec_seed in rec_seeds:
                suffix = f"_rs{rec_seed}" if rec_seed else ""
                path = (args.workdir / "records"
                        / f"{row[0]}_{row[1]}_{args.iters}_split{seed}{suffix}.json")
                if not (args.reuse and path.exists()):
                    record = _run_split(row, source, calibration, evaluation, preprocessing, args,
                                        rec_seed)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(record))
                record = json.loads(path.read_text())
                if rec_seed == rec_seeds[0]:
                    records[row].append(record)
                if row[1] == "reconstruct":
                    runs.setdefault((row[0], seed), []).append((rec_seed or 0, record))
        _table(rows, records, evaluated, count, args)
    if len(args.reconstruct_seeds) > 1:
        _spread(runs)


def _run_split(row, source, calibration, evaluation, preprocessing, args,
               reconstruct_seed: int | None = None) -> dict:
    """Quantize with one row's configuration and evaluate it beside fp32 in one pass over the
    evaluation images: a record of the split."""
    output = args.workdir / f"lite0_{row[0]}_{row[1]}.onnx"
    start = time.perf_counter()
    quantized = quantize_file(source, output, config(*row, args.iters, reconstruct_seed),
                              calibration)
    seconds = time.perf_counter() - start
    if quantized.blocks:
        kept = sum(block.kept for block in quantized.blocks)
        print(f"  {kept}/{len(quantized.blocks)} blocks kept; output error "
              + ", ".join(f"{b.start_error:.3f}→{b.error:.3f}" for b in quantized.blocks))
    batches = list(evaluate.paired_logits(str(source), str(output), evaluation, preprocessing,
                                          batch_size=32, ep="cpu"))
    fp32 = np.concatenate([a.argmax(axis=1) for a, _ in batches])
    predictions = np.concatenate([b.argmax(axis=1) for _, b in batches])
    divergences = np.concatenate([pass_selection.kl_per_image(a, b) for a, b in batches])
    labels = np.asarray(evaluation.labels)
    print(f"{row}: {seconds:.0f} s, top-1 agreement {100 * (predictions == fp32).mean():.1f} %, "
          f"KL {divergences.mean():.4f}", flush=True)
    bits = accounting.account(quantized.model).equivalent_bits
    return {"seconds": seconds, "bits": bits, "correct": (predictions == labels).tolist(),
            "agree": (predictions == fp32).tolist(), "fp32_correct": (fp32 == labels).tolist(),
            "kl": divergences.tolist()}


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


def _table(rows, records, evaluated, splits, args) -> None:
    """The pooled table of the first ``splits`` splits (printed after each one); its standard
    errors count an image evaluated in several splits once (``reporting.statistics``)."""
    pooled = {row: {key: np.concatenate([np.asarray(r[key], float) for r in records[row]])
                    for key in ("correct", "agree", "fp32_correct", "kl")} for row in rows}
    fp32 = pooled[rows[0]]["fp32_correct"]
    print(f"\n{splits} splits, {len(fp32)} evaluations of {len(set(evaluated))} images, "
          f"fp32 top-1 {100 * fp32.mean():.2f} %, {args.iters} steps per block\n")
    print("| budget | rounding | top-1 | − fp32 (± SE) | agreement with fp32 (± SE) "
          "| agreement − GPTQ's (± SE) | KL from fp32 (± SE) | KL − GPTQ's (± SE) "
          "| equivalent bits | quantize s | time ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for budget, rounding in rows:
        row = pooled[budget, rounding]
        hits, same, divergence = row["correct"], row["agree"], row["kl"]
        drop = hits - fp32
        gptq = pooled.get((budget, "gptq"))
        versus, kl_versus = "", ""
        if gptq is not None and rounding != "gptq":
            versus = estimate(same - gptq["agree"], evaluated)
            kl_versus = estimate(divergence - gptq["kl"], evaluated, 1, 4)
        median = statistics.median(r["seconds"] for r in records[budget, rounding])
        base = statistics.median(r["seconds"] for r in records.get((budget, "nearest"),
                                                                   records[budget, rounding]))
        bits = next((f"{r['bits']:.3f}" for r in records[budget, rounding] if "bits" in r), "")
        agreement = estimate(same, evaluated, signed=False)
        kl = estimate(divergence, evaluated, 1, 4, signed=False)
        print(f"| {budget} | {rounding} | {100 * hits.mean():.2f} % | {estimate(drop, evaluated)} "
              f"| {agreement} % | {versus} | {kl} | {kl_versus} "
              f"| {bits} | {median:.0f} | {median / base:.1f}× |", flush=True)


def _spread(runs: dict[tuple[str, int], list[tuple[int, dict]]]) -> None:
    """Each reconstruct run's means by split and optimisation seed, and the standard deviation
    of a run's mean KL divergence between seeds of the same split (pooled over the splits)."""
    print("\n| budget | split | seed | top-1 | agreement with fp32 | KL from fp32 |")
    print("|---|---|---|---|---|---|")
    deviations: dict[str, list[float]] = {}
    for (budget, split), seeded in runs.items():
        for rec_seed, record in seeded:
            print(f"| {budget} | {split} | {rec_seed} | {100 * np.mean(record['correct']):.2f} % "
                  f"| {100 * np.mean(record['agree']):.2f} % | {np.mean(record['kl']):.4f} |")
        means = [np.mean(record["kl"]) for _, record in seeded]
        if len(means) > 1:
            deviations.setdefault(budget, []).append(float(np.var(means, ddof=1)))
    for budget, variances in deviations.items():
        print(f"\n{budget}: a run's mean KL divergence varies between optimisation seeds by "
              f"{np.sqrt(np.mean(variances)):.4f} (standard deviation, {len(variances)} splits)")


if __name__ == "__main__":
    main()
