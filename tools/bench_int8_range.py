"""Full-range against reduced-range (7-bit) int8 weights of the W8A8 default, EfficientNet-Lite0.

ONNX Runtime's u8×s8 kernels add pairs of products into a saturating int16 on x86 CPUs without
VNNI; weight codes within ±64 cannot saturate. Two measurements, printed as markdown:

* on this machine, over ``--splits`` seeded 128/372 calibration/evaluation splits: top-1 and
  agreement with fp32 of the W8A8 default quantized with ``--full-range`` and ``--reduce-range``
  (7-bit codes, so GPTQ rounding and bias correction by default), with the paired standard
  error of their difference and the quantize time (the cost of the 7-bit codes where the
  kernels do not saturate, when this machine has VNNI);
* with ``--emulate CPU`` (needs ``qemu-x86_64``, Debian's ``qemu-user``): the same two models'
  int8 kernels run under ``qemu-x86_64 -cpu CPU`` (``Haswell``: AVX2 without VNNI) on the first
  ``--emulated-images`` evaluation images of split 0, against the float (fake-quantized) graph
  and fp32 computed here.

    python tools/bench_int8_range.py [--splits 4] [--emulate Haswell --emulated-images 96]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxq.models.export import exported_model

from onnxq.base import host, progress
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.io import data
from onnxq.pipeline import modelio
from onnxq.pipeline.quantize import quantize
from onnxq.reporting import evaluate
from onnxq.reporting.statistics import estimate

REPO = Path(__file__).resolve().parent.parent
CALIBRATION_IMAGES = 128
RANGES = {"full": False, "reduced": True}


def w8a8(reduce_range: bool) -> QuantConfig:
    return QuantConfig(
        weights=Scheme.parse("per-channel-symmetric", bits=8),
        features=Scheme.parse("per-tensor-affine", bits=8),
        reduce_range=reduce_range,
    )


def pooled(source: Path, images: data.ImageSet, splits: int) -> list[str]:
    """Markdown rows: each range's top-1 and agreement with fp32, pooled over the splits."""
    preprocessing = modelio.get_preprocessing(modelio.load_model(source))
    agree: dict[str, list[np.ndarray]] = {name: [] for name in RANGES}
    seconds: dict[str, list[float]] = {name: [] for name in RANGES}
    correct: dict[str, list[np.ndarray]] = {name: [] for name in ("fp32", *RANGES)}
    evaluated: list[Path] = []  # the image of each pooled evaluation
    for seed in range(splits):
        calibration, evaluation = images.split(CALIBRATION_IMAGES, seed=seed)
        evaluated += evaluation.files
        labels = np.asarray(evaluation.labels)
        fp32 = evaluate.evaluate(str(source), evaluation, preprocessing, ep="cpu")
        correct["fp32"].append(np.asarray(fp32.predictions) == labels)
        for name, reduce_range in RANGES.items():
            model = modelio.load_model(source)
            seconds[name].append(quantize(model, w8a8(reduce_range), calibration).seconds)
            result = evaluate.evaluate(model, evaluation, preprocessing, ep="cpu")
            agree[name].append(np.asarray(result.predictions) == np.asarray(fp32.predictions))
            correct[name].append(np.asarray(result.predictions) == labels)
            print(f"  split {seed} {name}: top-1 {result.top1:.2f}, agree {fp32.agreement(result):.1f}",
                  flush=True)
    rows = [f"|fp32|{100 * np.concatenate(correct['fp32']).mean():.2f}|100.0|/|/|"]
    for name in RANGES:
        agreement = np.concatenate(agree[name]).astype(float)
        difference = agreement - np.concatenate(agree["full"])
        change = "/" if name == "full" else estimate(difference, evaluated)
        top1 = 100 * np.concatenate(correct[name]).mean()
        ratio = np.median(np.divide(seconds[name], seconds["full"]))
        rows.append(f"|W8A8, {name} range|{top1:.2f}|{100 * agreement.mean():.2f}|{change}|"
                    f"{np.median(seconds[name]):.1f} s ({ratio:.1f}×)|")
    return rows


#: Runs inside the emulator: only ONNX Runtime on saved pixels (decoding there is very slow).
_EMULATED = """
import sys, numpy as np, onnxruntime as ort
folder = sys.argv[1]
pixels = np.load(folder + "/pixels.npy")
for name in sys.argv[2:]:
    session = ort.InferenceSession(f"{folder}/{name}.onnx", providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    logits = [session.run(None, {feed: pixels[i:i + 8]})[0] for i in range(0, len(pixels), 8)]
    np.save(f"{folder}/{name}_emulated.npy", np.concatenate(logits))
"""


def _logits(model: Path, pixels: np.ndarray, fake: bool = False) -> np.ndarray:
    options = ort.SessionOptions()
    if fake:  # no fusion: Q/DQ and float kernels, the same arithmetic on every CPU
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: pixels})[0]


def emulated(source: Path, images: data.ImageSet, cpu: str, count: int) -> list[str]:
    """Markdown rows: the int8 kernels of both ranges under ``qemu-x86_64 -cpu cpu``."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        sys.exit("--emulate needs qemu-x86_64 (apt-get install qemu-user)")
    calibration, evaluation = images.split(CALIBRATION_IMAGES, seed=0)
    preprocessing = modelio.get_preprocessing(modelio.load_model(source))
    pixels = np.stack([preprocessing.load(str(f)) for f in evaluation.files[:count]])
    fp32 = _logits(source, pixels).argmax(1)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        np.save(f"{folder}/pixels.npy", pixels)
        for name, reduce_range in RANGES.items():
            model = modelio.load_model(source)
            quantize(model, w8a8(reduce_range), calibration)
            modelio.save_model(model, Path(folder) / f"{name}.onnx")
        subprocess.run([qemu, "-cpu", cpu, sys.executable, "-c", _EMULATED, folder, *RANGES],
                       check=True, stderr=subprocess.DEVNULL)
        for name in RANGES:
            path = Path(folder) / f"{name}.onnx"
            fake, here = _logits(path, pixels, fake=True), _logits(path, pixels)
            there = np.load(f"{folder}/{name}_emulated.npy")
            for where, logits in (("this CPU", here), (f"emulated {cpu}", there)):
                rows.append(
                    f"|W8A8, {name} range|{where}|{np.abs(logits - here).max():.3f}|"
                    f"{np.abs(logits - fake).max():.3f}|"
                    f"{100 * (logits.argmax(1) == fake.argmax(1)).mean():.1f}|"
                    f"{100 * (logits.argmax(1) == fp32).mean():.1f}|"
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--workdir", type=Path, default=REPO / "artifacts/bench_int8_range")
    parser.add_argument("--splits", type=int, default=4)
    parser.add_argument("--emulate", metavar="CPU", help="a qemu CPU model, e.g. Haswell")
    parser.add_argument("--emulated-images", type=int, default=96)
    args = parser.parse_args()
    progress.set_quiet(True)
    source = exported_model(args.workdir, "efficientnet_lite0")
    images = data.find_images(args.data)
    saturates = host.int8_kernels_saturate()
    print(f"\nthis CPU: int8 kernels {'saturate' if saturates else 'do not saturate'}; "
          f"onnxruntime {ort.__version__}\n")
    if args.splits:
        print(f"{args.splits} splits × {len(images) - CALIBRATION_IMAGES} evaluation images\n")
        print("|weights|top-1|agree w/ fp32 %|agreement − full range (± paired SE)|"
              "quantize (median, ratio)|")
        print("|---|---|---|---|---|")
        print("\n".join(pooled(source, images, args.splits)))
    if args.emulate:
        print(f"\n{args.emulated_images} evaluation images of split 0\n")
        print("|weights|int8 kernels on|max abs logit − this CPU's|max abs logit − float graph|"
              "same top-1 as float graph %|agree w/ fp32 %|")
        print("|---|---|---|---|---|---|")
        print("\n".join(emulated(source, images, args.emulate, args.emulated_images)))


if __name__ == "__main__":
    main()
