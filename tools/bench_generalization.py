"""Where reconstruction's gain holds: the same model on its calibration images, new views of them
and other images (EfficientNet-Lite0, real images).

A model quantized on one split's 128 calibration images (a ``bench_reconstruct`` budget and
rounding) is compared with fp32 on four sets of inputs: the calibration images exactly as
calibration saw them; the same images mirrored; the same images resized to 320 before the
224 crop (a closer, shifted view); and the split's evaluation images, each of a class no
calibration image shows (the sample holds one image per class). Per set: the mean KL divergence
of the softmax from fp32's with its standard error, and top-1 agreement with fp32. The
differences between the first three sets are what the model fits to the exact inputs; between
the views and the other images, what it fits to the images' content. Prints a markdown table::

    python tools/bench_generalization.py [--seed 0] [--budgets W4A8 W4A4-mse]
        [--roundings gptq reconstruct] [--reconstruct-seed N] [--reuse]

Models are written to ``--workdir`` as ``lite0_<budget>_<rounding>_split<seed>.onnx``;
``--reuse`` measures such a file again instead of quantizing anew.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from bench_reconstruct import BUDGETS, CALIBRATION, config
from onnxq.models.export import exported_model

from onnxq.base import progress
from onnxq.base.constants import RECONSTRUCT_ITERATIONS
from onnxq.io import data, runtime
from onnxq.io.preprocessing import Preprocessing
from onnxq.pipeline import modelio, pass_selection
from onnxq.pipeline.quantize import quantize_file
from onnxq.reporting.statistics import estimate

REPO = Path(__file__).resolve().parent.parent
BATCH = 32
#: The short side a calibration image is resized to for the shifted view (224 crop, as always).
SHIFTED_RESIZE = 320
VIEWS = ("calibration images", "mirrored", f"resized to {SHIFTED_RESIZE}", "other images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxq-bench/generalization"))
    parser.add_argument("--seed", type=int, default=0, help="the calibration/evaluation split")
    parser.add_argument("--budgets", nargs="*", default=["W4A8", "W4A4-mse"], choices=BUDGETS)
    parser.add_argument("--roundings", nargs="*", default=["gptq", "reconstruct"],
                        choices=["nearest", "gptq", "reconstruct"])
    parser.add_argument("--reconstruct-seed", type=int, default=None,
                        help="the optimisation's seed of the reconstruct rows (default: 0)")
    parser.add_argument("--reuse", action="store_true",
                        help="measure the models already written instead of quantizing anew")
    args = parser.parse_args()
    progress.set_quiet(True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    source = exported_model(args.workdir, "efficientnet_lite0")
    preprocessing = modelio.get_preprocessing(modelio.load_model(source))
    calibration, evaluation = data.find_images(args.data).split(CALIBRATION, seed=args.seed)
    inputs = _views(calibration, evaluation, preprocessing)
    reference = source.read_bytes()
    fp32 = {view: runtime.logits(reference, pixels, "cpu", BATCH) for view, pixels in inputs.items()}
    print(f"split {args.seed}: {CALIBRATION} calibration images, "
          f"{len(inputs[VIEWS[-1]])} other images\n")
    print("| budget | rounding | " + " | ".join(f"{view}: KL (± SE), agreement"
                                                for view in VIEWS) + " |")
    print("|---|---|" + "---|" * len(VIEWS))
    for budget in args.budgets:
        for rounding in args.roundings:
            model = _model(source, budget, rounding, calibration, args).read_bytes()
            cells = [_cell(fp32[view], runtime.logits(model, pixels, "cpu", BATCH))
                     for view, pixels in inputs.items()]
            print(f"| {budget} | {rounding} | " + " | ".join(cells) + " |", flush=True)


def _views(
    calibration: data.ImageSet, evaluation: data.ImageSet, preprocessing: Preprocessing
) -> dict[str, np.ndarray]:
    """The preprocessed pixels of each set of inputs, by the name of the view."""
    shifted = dataclasses.replace(preprocessing, resize=SHIFTED_RESIZE)
    pixels = _pixels(calibration, preprocessing)
    return dict(zip(VIEWS, (pixels, pixels[..., ::-1].copy(), _pixels(calibration, shifted),
                            _pixels(evaluation, preprocessing))))


def _pixels(images: data.ImageSet, preprocessing: Preprocessing) -> np.ndarray:
    return np.concatenate([p for p, _ in data.iter_batches(images, preprocessing, BATCH)])


def _model(source: Path, budget: str, rounding: str, calibration: data.ImageSet,
           args: argparse.Namespace) -> Path:
    """The quantized model of one row, written unless ``--reuse`` finds it."""
    seed = args.reconstruct_seed if rounding == "reconstruct" else None
    suffix = f"_rs{seed}" if seed else ""
    path = args.workdir / f"lite0_{budget}_{rounding}_split{args.seed}{suffix}.onnx"
    if not (args.reuse and path.exists()):
        quantize_file(source, path, config(budget, rounding, RECONSTRUCT_ITERATIONS, seed),
                      calibration)
    return path


def _cell(fp32: np.ndarray, quantized: np.ndarray) -> str:
    divergences = pass_selection.kl_per_image(fp32, quantized)
    agreement = 100 * float((fp32.argmax(1) == quantized.argmax(1)).mean())
    return f"{estimate(divergences, scale=1, digits=4, signed=False)}, {agreement:.1f} %"


if __name__ == "__main__":
    main()
