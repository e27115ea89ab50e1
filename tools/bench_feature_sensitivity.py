"""Where low-bit features lose accuracy on EfficientNet-Lite0: each feature quantizer alone.

The model is quantized with 8-bit weights (round to nearest, so the weights add almost nothing)
and ``--f-bits`` per-tensor-affine features (the MSE observer, the command line's default under
8 bits), first and last layers at 8 bits, on 128 calibration images. Then, for each low-bit
feature quantizer (a QuantizeLinear, Clip, DequantizeLinear chain), a copy of the model keeps
that one and drops every other, and the KL divergence of its softmax from fp32's is measured on
the other sample images. Prints the divergence of the model with all of them, with none (8-bit
weights only) and a markdown table, largest first: each quantizer's divergence alone, what it
adds to the weights-only model, the layer it feeds and its share of the sum::

    python tools/bench_feature_sensitivity.py [--seed 0] [--f-bits 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnxq.models.export import exported_model

from onnxq.base import progress
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.io import data, runtime
from onnxq.pipeline import modelio, pass_selection
from onnxq.pipeline.quantize import quantize_file

REPO = Path(__file__).resolve().parent.parent
CALIBRATION = 128
BATCH = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxq-bench/features"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--f-bits", type=int, default=4)
    args = parser.parse_args()
    progress.set_quiet(True)
    source = exported_model(args.workdir, "efficientnet_lite0")
    preprocessing = modelio.get_preprocessing(modelio.load_model(source))
    calibration, evaluation = data.find_images(args.data).split(CALIBRATION, seed=args.seed)
    config = QuantConfig(
        weights=Scheme.parse("per-channel-affine", bits=8),
        features=Scheme.parse("per-tensor-affine", bits=args.f_bits, observer="mse"),
        calib_size=CALIBRATION, keep_8bit=("first", "last"), rounding="nearest",
    )
    output = args.workdir / f"lite0_w8a{args.f_bits}_split{args.seed}.onnx"
    quantize_file(source, output, config, calibration)
    pixels = np.concatenate([p for p, _ in data.iter_batches(evaluation, preprocessing, BATCH)])
    fp32 = runtime.logits(source.read_bytes(), pixels, "cpu", BATCH)
    quantized = runtime.logits(output.read_bytes(), pixels, "cpu", BATCH)
    every = float(pass_selection.kl_per_image(fp32, quantized).mean())
    model = onnx.load(output)
    chains = _low_bit_chains(model)
    weights_only, alone = _divergences(model, chains, fp32, pixels)
    added = {name: kl - weights_only for name, kl in alone.items()}
    total = sum(added.values())
    print(f"split {args.seed}, {len(pixels)} evaluation images, {len(chains)} {args.f_bits}-bit "
          f"feature quantizers: KL {every:.4f} with all, {weights_only:.4f} with none "
          f"(8-bit weights only); the quantizers' additions sum to {total:.4f}\n")
    shapes = _shapes(source)
    print("| feature | channels × height × width | feeds | KL alone | added | share of the sum |")
    print("|---|---|---|---|---|---|")
    for name in sorted(alone, key=alone.get, reverse=True):
        print(f"| `{name}` | {shapes.get(name, '?')} | `{chains[name][3]}` | {alone[name]:.4f} "
              f"| {added[name]:+.4f} | {100 * added[name] / total:.1f} % |")


def _divergences(model: onnx.ModelProto, chains: dict, fp32: np.ndarray,
                 pixels: np.ndarray) -> tuple[float, dict[str, float]]:
    """Mean KL divergence from fp32 of ``model`` without its low-bit feature quantizers, and of
    ``model`` with each one alone."""

    def divergence(kept: str | None) -> float:
        copy = _keeping(model, chains, kept).SerializeToString()
        logits = runtime.logits(copy, pixels, "cpu", BATCH)
        return float(pass_selection.kl_per_image(fp32, logits).mean())

    alone = {name: divergence(name) for name in progress.track(chains, "quantizers", len(chains))}
    return divergence(None), alone


def _shapes(source: Path) -> dict[str, str]:
    """Tensor name → ``C×H×W`` from ONNX shape inference on the float model."""
    inferred = onnx.shape_inference.infer_shapes(onnx.load(source))
    return {value.name: "×".join(str(d.dim_value) for d in value.type.tensor_type.shape.dim[1:])
            for value in inferred.graph.value_info}


def _low_bit_chains(model: onnx.ModelProto) -> dict[str, tuple[onnx.NodeProto, ...] | str]:
    """Feature tensor → (QuantizeLinear, Clip, DequantizeLinear, name of the first consumer) of
    each low-bit feature quantizer (8-bit ones have no Clip)."""
    constants = {i.name for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    chains = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in constants:
            continue
        clip = consumers[node.output[0]][0]
        if clip.op_type == "Clip":
            dequantize = consumers[clip.output[0]][0]
            chains[node.input[0]] = (node, clip, dequantize,
                                     consumers[dequantize.output[0]][0].name)
    return chains


def _keeping(model: onnx.ModelProto, chains: dict, kept: str | None) -> onnx.ModelProto:
    """A copy of ``model`` without the low-bit feature quantizers other than ``kept``: their
    consumers read the float tensor."""
    dropped = {name: chain for name, chain in chains.items() if name != kept}
    removed = {node.output[0] for chain in dropped.values() for node in chain[:3]}
    rewired = {chain[2].output[0]: name for name, chain in dropped.items()}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes = [node for node in copy.graph.node if node.output[0] not in removed]
    for node in nodes:
        node.input[:] = [rewired.get(name, name) for name in node.input]
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy


if __name__ == "__main__":
    main()
