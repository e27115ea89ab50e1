"""onnxq's model forms on OpenVINO's CPU plugin: speed against fp32, and which layers run int8.

EfficientNet-Lite0 (real weights), calibrated on the seeded 128 images of split 0 with the
CLI's defaults (GPTQ and bias correction below 8 bits). Every form is compiled with each
precision hint (``f32``, and ``bf16`` where the CPU has it) and timed on one decoded batch of
``--batch`` images (``--warmup`` runs, then the median of ``--runs``), side by side with the
fp32 model under the same hint; "int8 convolutions" counts the Convolution layers of OpenVINO's
runtime graph that run in u8/i8. Agreement is the top-1 agreement with ONNX Runtime on the 372
held-out images. Prints markdown for BENCHMARKS.md::

    python tools/bench_openvino.py [--batch 32 --runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import openvino
from onnxq.models.export import exported_model

from onnxq.base import progress
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.io import data
from onnxq.pipeline import modelio
from onnxq.pipeline.deploy import deploy
from onnxq.pipeline.quantize import quantize
from onnxq.reporting import evaluate

REPO = Path(__file__).resolve().parent.parent
A8 = Scheme.parse("per-tensor-affine", bits=8)
GROUPED = Scheme.parse("per-group-affine", bits=4, group_size=8)
#: (label, config or None for fp32, deployment form or None)
FORMS = (
    ("fp32", None, None),
    ("W8A8 (CLI default, fused)", QuantConfig(weights=Scheme.parse("per-channel-symmetric", bits=8),
                                              features=A8), None),
    ("W4A8 per-channel, first/last 8-bit, fused", QuantConfig(
        weights=Scheme.parse("per-channel-affine", bits=4), features=A8,
        keep_8bit=("first", "last"), placement="fused"), None),
    ("… then onnxq deploy (int8 kernels)", QuantConfig(
        weights=Scheme.parse("per-channel-affine", bits=4), features=A8,
        keep_8bit=("first", "last"), placement="fused"), "int8-kernels"),
    ("W4A8 gs 8, decomposed scales", QuantConfig(
        weights=GROUPED, features=A8, keep_8bit=("first", "last"), decompose_scales=True), None),
    ("… then onnxq deploy --fold-weights", QuantConfig(
        weights=GROUPED, features=A8, keep_8bit=("first", "last"), decompose_scales=True),
     "float-weights"),
    ("W4 gs 8 weight-only", QuantConfig(weights=GROUPED, keep_8bit=("first", "last")), None),
)


def compile_model(path: Path, hint: str):
    core = openvino.Core()
    return core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint})


def images_per_second(compiled, pixels: np.ndarray, warmup: int, runs: int) -> float:
    request = compiled.create_infer_request()
    for _ in range(warmup):
        request.infer({0: pixels})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        request.infer({0: pixels})
        times.append(time.perf_counter() - start)
    return len(pixels) / statistics.median(times)


def int8_convolutions(compiled) -> tuple[int, int]:
    """(Convolution layers running in u8/i8, all Convolution layers) of the runtime graph."""
    convolutions = [
        op.get_rt_info() for op in compiled.get_runtime_model().get_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    ]
    low = [info for info in convolutions if info["runtimePrecision"].astype(str) in ("u8", "i8")]
    return len(low), len(convolutions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--workdir", type=Path, default=REPO / "artifacts/bench_openvino")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    progress.set_quiet(True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    source = exported_model(args.workdir, "efficientnet_lite0")
    calibration, evaluation = data.find_images(args.data).split(128, seed=0)
    preprocessing = modelio.get_preprocessing(modelio.load_model(source))
    pixels = np.stack([preprocessing.load(str(f)) for f in evaluation.files[: args.batch]])
    hints = ["f32"] + (["bf16"] if "BF16" in openvino.Core().get_property(
        "CPU", "OPTIMIZATION_CAPABILITIES") else [])
    paths = {}
    for index, (label, config, form) in enumerate(FORMS):
        path = source if config is None else args.workdir / f"form{index}.onnx"
        if config is not None:
            model = modelio.load_model(source)
            quantize(model, config, calibration)
            if form is not None:
                deploy(model, fold_weights=form == "float-weights")
            modelio.save_model(model, path)
        paths[label] = path
    speeds = {(label, hint): 0.0 for label in paths for hint in hints}
    for hint in hints:  # fp32 and every form side by side, one hint at a time
        for label, path in paths.items():
            compiled = compile_model(path, hint)
            speeds[label, hint] = images_per_second(compiled, pixels, args.warmup, args.runs)
            print(f"  {label} ({hint}): {speeds[label, hint]:.1f} images/s", flush=True)
    header = "|form|" + "|".join(f"images/s {h}|× fp32 ({h})" for h in hints)
    lines = [header + "|int8 convolutions|top-1 agreement with ONNX Runtime %|",
             "|---|" + "---|---|" * len(hints) + "---|---|"]
    for label, path in paths.items():
        low, total = int8_convolutions(compile_model(path, hints[-1]))
        reference = evaluate.evaluate(str(path), evaluation, preprocessing, ep="cpu")
        ours = evaluate.evaluate(str(path), evaluation, preprocessing, runtime_name="openvino")
        cells = "|".join(
            f"{speeds[label, h]:.1f}|{speeds[label, h] / speeds['fp32', h]:.2f}" for h in hints
        )
        lines.append(f"|{label}|{cells}|{low}/{total}|{reference.agreement(ours):.1f}|")
    print(f"\nopenvino {openvino.__version__}, batch {args.batch}, hints {', '.join(hints)}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
