"""Models from elsewhere: canonicalization, W8A8 fidelity and the full CLI path per model.

For every model of the corpus in ``tests/elsewhere.py`` (the ``onnx`` wheel's model-zoo files,
plain ``torch.onnx.export`` of torchvision models at opsets 13/17, fixed batch 1 and dynamic,
ConvNeXt-Tiny): load it as onnxq does (what canonicalization changed), then through the
command line ``quantize`` at W8A8 and at W4 per-group gs 8 (round-to-nearest: GPTQ on the
zoo files' 9216- to 25088-column fully connected layers takes minutes), both with ``--reorder auto
--verify``, ``eval`` and ``report``; then the W8A8 model's logit cosine with fp32 and its top-1
agreement with fp32 on real images not used for calibration. Prints a markdown table::

    python tools/bench_elsewhere.py [--images 100] [--calib-size 32] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from elsewhere import light_sources, reads_quantized_weight, torch_sources  # noqa: E402

from onnxq.base import progress  # noqa: E402
from onnxq.io import data  # noqa: E402
from onnxq.io import preprocessing as preprocessing_module  # noqa: E402
from onnxq.pipeline import modelio  # noqa: E402
from onnxq.reporting import evaluate  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "imagenet-sample"
W4 = ["--wbits", "4", "--scheme", "per-group-affine", "--gs", "8", "--rounding", "nearest"]


def onnxq(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "onnxq", "-q", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")
    return result


def measure(source, folder: Path, calib: Path, evaluation, calib_size: int) -> dict:
    path = source.path(folder)
    model, changes = modelio.load_model_and_changes(path)
    preset = preprocessing_module.resolve(source.preprocess)
    preprocessing = modelio.choose_preprocessing(model, preset, path)
    given = ["--preprocess", source.preprocess] if source.preprocess else []
    row = {"model": source.name, "source": source.source, "opset": source.opset,
           "changes": changes or "nothing"}
    start = time.perf_counter()
    for name, extra in (("w8a8", []), ("w4a8", W4)):
        output = folder / f"{source.name}_{name}.onnx"
        onnxq("quantize", path, "-o", output, "--calib", calib, "--calib-size", calib_size,
              "--reorder", "auto", "--verify", *given, *extra)
        onnxq("eval", output, "--data", SAMPLE, "--limit", 8)
        onnxq("report", output)
        quantized = modelio.load_model(output)
        convs = [n for n in quantized.graph if n.op_type == "Conv"]
        row[f"{name}_bn_left"] = sum(n.op_type == "BatchNormalization" for n in quantized.graph)
        row[f"{name}_quantized_convs"] = sum(reads_quantized_weight(n) for n in convs) / max(len(convs), 1)
    row["cli_seconds"] = time.perf_counter() - start
    w8a8 = folder / f"{source.name}_w8a8.onnx"
    cosines = evaluate.logit_cosines(str(path), str(w8a8), evaluation, preprocessing)
    reference = evaluate.evaluate(str(path), evaluation, preprocessing)
    quantized = evaluate.evaluate(str(w8a8), evaluation, preprocessing)
    row.update(cosine_min=float(cosines.min()), cosine_mean=float(cosines.mean()),
               agreement=reference.agreement(quantized))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="evaluation images")
    parser.add_argument("--calib-size", type=int, default=32)
    parser.add_argument("--only", nargs="*", help="model names to run")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/onnxq-bench/elsewhere"))
    args = parser.parse_args()
    progress.set_quiet(True)
    images = data.find_images(SAMPLE)
    calibration, evaluation = images.split(len(images) - args.images)
    calib = args.folder / "calibration"
    calib.mkdir(parents=True, exist_ok=True)
    for file in calibration.files[: args.calib_size]:
        if not (calib / file.name).exists():
            (calib / file.name).symlink_to(file)
    sources = [s for s in light_sources() + torch_sources() if not args.only or s.name in args.only]
    print("| model | source | opset | what loading changed | W8A8 logit cosine, min / mean "
          "| W8A8 top-1 agreement with fp32 | Convs reading a quantized weight (W8A8 / W4) "
          "| CLI seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for source in sources:
        try:
            row = measure(source, args.folder, calib, evaluation, args.calib_size)
        except Exception as error:  # report the failure and go on with the next model
            print(f"| {source.name} | {source.source} | {source.opset} | FAILED: "
                  f"{str(error)[-300:]} | | | | |", flush=True)
            continue
        print(f"| {row['model']} | {row['source']} | {row['opset']} | {row['changes']} "
              f"| {row['cosine_min']:.4f} / {row['cosine_mean']:.4f} | {row['agreement']:.1f} % "
              f"| {row['w8a8_quantized_convs']:.0%} / {row['w4a8_quantized_convs']:.0%} "
              f"| {row['cli_seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
