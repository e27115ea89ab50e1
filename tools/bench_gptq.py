"""GPTQ cost: round-to-nearest against GPTQ + bias correction, side by side.

Three rows per model: round-to-nearest, GPTQ on the float network's layer inputs (the
default), and GPTQ on the partly quantized network's (``--gptq-inputs quantized``, 4 stages),
all on the CPU; ``--gpu`` adds GPTQ with its linear algebra on the GPU (torch with CUDA; the
check of a GPU machine: ``python tools/bench_gptq.py --repeats 1 --gpu``).

W4A8 per-channel-affine weights with the first and last layers at 8 bits, 128 calibration
images, on EfficientNet-Lite0 (real weights) and ResNet18/ResNet50 (seeded random weights:
time and memory only). Each quantization runs in a fresh process (wall time and peak resident
memory its own), round-to-nearest and GPTQ alternating, ``--repeats`` times; the table gives
the medians and GPTQ's ratio to round-to-nearest. For EfficientNet-Lite0 it adds top-1
agreement with fp32 on the images not used for calibration. The floor is what GPTQ's linear
algebra needs at this machine's BLAS rate: the multiply-adds of the second moments (a symmetric
rank-k product over the patch columns each layer keeps, float32), of their Cholesky factors and
triangular inverses and of the column updates (float64), divided by the rate of a large matrix
product measured here; GPTQ's time over round-to-nearest cannot be below it. Prints a markdown
table::

    python tools/bench_gptq.py [--repeats 2] [--models efficientnet_lite0 resnet18 resnet50]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from onnxq.models.export import exported_model

from onnxq.analysis.plan import make_plan
from onnxq.base import progress
from onnxq.calibration import layer_inputs
from onnxq.core import rounding
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.experiments.experiment import in_fresh_process
from onnxq.io import data
from onnxq.pipeline import modelio
from onnxq.pipeline.quantize import quantize_file
from onnxq.reporting import evaluate

REPO = Path(__file__).resolve().parent.parent
CALIBRATION = 128
#: (row name, rounding, bias correction, GPTQ inputs, execution provider): round-to-nearest,
#: GPTQ on the float network's inputs (the default), GPTQ on the partly quantized network's
#: (4 stages), all on the CPU.
ROUNDINGS = (
    ("nearest", "nearest", False, "float", "cpu"),
    ("gptq", "gptq", True, "float", "cpu"),
    ("gptq, quantized inputs", "gptq", True, "quantized", "cpu"),
)
#: With ``--gpu``: GPTQ's linear algebra on the GPU (torch), the calibration on whatever
#: ``--ep auto`` finds.
GPU_ROW = ("gptq on the GPU", "gptq", True, "float", "auto")


def config(method: str, bias_correction: bool, inputs: str = "float") -> QuantConfig:
    return QuantConfig(
        weights=Scheme.parse("per-channel-affine", bits=4),
        features=Scheme.parse("per-tensor-affine", bits=8),
        calib_size=CALIBRATION,
        keep_8bit=("first", "last"),
        rounding=method,
        bias_correction=bias_correction,
        gptq_inputs=inputs,
    )


def blas_rates(size: int = 2048) -> dict[type, float]:
    """Multiply-adds per second of a ``size``-square matrix product, float32 and float64."""
    rates = {}
    for dtype in (np.float32, np.float64):
        a, b = (np.random.default_rng(0).normal(size=(size, size)).astype(dtype) for _ in range(2))
        a @ b  # warm-up
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        rates[dtype] = 3 * size**3 / (time.perf_counter() - start)
    return rates


def floor_seconds(source: Path, images: int, rates: dict[type, float]) -> float:
    """The seconds GPTQ's linear algebra needs at ``rates`` for ``config``'s targets."""
    model = modelio.load_model(source)
    plan = make_plan(model, config("gptq", True))
    inferred = onnx.shape_inference.infer_shapes(ir.serde.serialize_model(model))
    shapes = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.graph.value_info, *inferred.graph.input)}
    nodes = {node.name: node for node in model.graph}
    gram = float64 = 0.0
    for target in plan.weights:
        node = nodes[target.node]
        shape = tuple(node.inputs[target.input_index].const_value.shape)
        geometry = layer_inputs.LayerGeometry.of(node, shape)
        depth = math.prod(shape) // shape[target.out_axis]
        rows = shape[target.out_axis] // geometry.groups
        positions = layer_inputs.output_positions(tuple(shapes[node.inputs[0].name]), geometry)
        kept = min(positions, layer_inputs.positions_per_image(depth, images)) * images
        if kept < rounding.min_correlated_samples(depth):
            continue  # no second moment: rounded to nearest
        gram += geometry.groups * kept * depth * (depth + 1) / 2
        float64 += geometry.groups * (depth**3 / 3 + rows * depth**2 / 2)
    return gram / rates[np.float32] + float64 / rates[np.float64]


def quantize_job(source: str, destination: str, config_dict: dict, images: str, ep: str) -> None:
    progress.set_quiet(True)
    config = QuantConfig.from_dict(config_dict)
    quantize_file(source, destination, config, data.find_images(images), ep=ep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxq-bench/gptq"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="*",
                        default=["efficientnet_lite0", "resnet18", "resnet50"])
    parser.add_argument("--gpu", action="store_true",
                        help="add a row with GPTQ on the GPU (needs torch with CUDA)")
    args = parser.parse_args()
    rows = ROUNDINGS + (GPU_ROW,) * args.gpu
    progress.set_quiet(True)
    images = data.find_images(args.data)
    evaluation = images.split(CALIBRATION, seed=0)[1]
    rates = blas_rates()
    print(f"BLAS: {rates[np.float32] / 1e9:.1f} G multiply-adds/s float32, "
          f"{rates[np.float64] / 1e9:.1f} float64\n")
    print("| model | rounding | seconds | peak MiB | time ratio | memory ratio | "
          "GPTQ − nearest: s (floor s) | top-1 agreement with fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        source = exported_model(args.workdir, name, random_weights=name != "efficientnet_lite0")
        runs: dict[str, list[tuple[float, float]]] = {row: [] for row, *_ in rows}
        for _ in range(args.repeats):
            for row, method, bias, inputs, ep in rows:
                output = args.workdir / f"{name}_{_file(row)}.onnx"
                settings = config(method, bias, inputs).to_dict()
                job = (str(source), str(output), settings, str(args.data), ep)
                _, seconds, peak = in_fresh_process(quantize_job, *job)
                runs[row].append((seconds, peak))
        medians = {r: tuple(statistics.median(v) for v in zip(*runs[r])) for r in runs}
        base_seconds, base_peak = medians["nearest"]
        floor = floor_seconds(source, CALIBRATION, rates)
        for row, method, *_ in rows:
            seconds, peak = medians[row]
            agreement = extra = ""
            if name == "efficientnet_lite0":
                output = args.workdir / f"{name}_{_file(row)}.onnx"
                agreement = f"{_agreement(source, output, evaluation):.1f} %"
            if method == "gptq":
                extra = f"{seconds - base_seconds:.1f} ({floor:.1f})"
            print(f"| {name} | {row} | {seconds:.1f} | {peak:.0f} | {seconds / base_seconds:.2f}× "
                  f"| {peak / base_peak:.2f}× | {extra} | {agreement} |", flush=True)


def _file(row: str) -> str:
    return row.replace(", ", "_").replace(" ", "_")


def _agreement(source: Path, quantized: Path, images: data.ImageSet) -> float:
    preprocessing = modelio.get_preprocessing(modelio.load_model(source))
    reference = evaluate.evaluate(str(source), images, preprocessing, ep="cpu")
    return reference.agreement(evaluate.evaluate(str(quantized), images, preprocessing, ep="cpu"))


if __name__ == "__main__":
    main()
