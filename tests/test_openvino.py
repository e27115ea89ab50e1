"""OpenVINO as a second runtime: ``onnxq eval --runtime openvino`` on onnxq's forms.

OpenVINO's CPU plugin must compile the models onnxq writes and agree with ONNX Runtime on the
top-1 class of real images (its int8 rounding and bf16 precision hint differ a little).
"""

from __future__ import annotations

import json
import subprocess
import sys

import onnx_ir as ir
import pytest

pytest.importorskip("openvino")

from onnxq.core.config import QuantConfig  # noqa: E402
from onnxq.core.schemes import Scheme  # noqa: E402
from onnxq.pipeline import modelio  # noqa: E402
from onnxq.pipeline.quantize import quantize  # noqa: E402
from onnxq.reporting import evaluate  # noqa: E402

W8A8 = QuantConfig(weights=Scheme.parse("per-channel-symmetric", bits=8),
                   features=Scheme.parse("per-tensor-affine", bits=8), calib_size=16)


@pytest.mark.slow
def test_openvino_agrees_with_onnxruntime_on_w8a8(effnet_path, sample_images):
    calibration, held_out = sample_images.split(16, seed=2)
    held_out = held_out.head(64)
    model = modelio.load_model(effnet_path)
    quantize(model, W8A8, calibration)
    preprocessing = modelio.get_preprocessing(model)
    reference = evaluate.evaluate(model, held_out, preprocessing, ep="cpu")
    openvino = evaluate.evaluate(model, held_out, preprocessing, runtime_name="openvino")
    assert openvino.provider.startswith("OpenVINO CPU (")
    assert reference.agreement(openvino) >= 95.0


W4 = dict(bits=4, observer="minmax")
#: Every weight form onnxq writes, as (name, config, deploy form or None). 4-bit rows keep the
#: first, last and depthwise layers at 8 bits so that their top-1 classes are not ties.
FORMS = [
    ("w4a8 per-channel affine", dict(weights=Scheme.parse("per-channel-affine", **W4)), None),
    ("w4a8 per-group affine gs 8", dict(weights=Scheme.parse("per-group-affine", group_size=8, **W4)), None),
    ("w4a8 decomposed affine gs 8", dict(weights=Scheme.parse("per-group-affine", group_size=8, **W4),
                                         decompose_scales=True), None),
    ("w4a8 decomposed symmetric gs 8", dict(weights=Scheme.parse("per-group-symmetric", group_size=8, **W4),
                                            decompose_scales=True), None),
    ("w4 weight-only decomposed gs 8", dict(weights=Scheme.parse("per-group-affine", group_size=8, **W4),
                                            decompose_scales=True, features=None), None),
    ("w4a8 per-channel, onnxq deploy", dict(weights=Scheme.parse("per-channel-affine", **W4),
                                            placement="fused"), "int8-kernels"),
    ("w4a8 per-group, onnxq deploy --fold-weights",
     dict(weights=Scheme.parse("per-group-affine", group_size=8, **W4)), "float-weights"),
]


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS, ids=[form[0] for form in FORMS])
def test_openvino_compiles_every_form_and_agrees_with_onnxruntime(form, effnet_path, sample_images):
    from onnxq.pipeline.deploy import deploy

    _, settings, deployed = form
    calibration, held_out = sample_images.split(16, seed=2)
    held_out = held_out.head(64)
    model = modelio.load_model(effnet_path)
    config = QuantConfig(**{"features": Scheme.parse("per-tensor-affine", bits=8), **settings},
                         keep_8bit=("first", "last", "depthwise"), rounding="nearest", calib_size=16)
    quantize(model, config, calibration)
    if deployed:
        deploy(model, fold_weights=deployed == "float-weights")
    preprocessing = modelio.get_preprocessing(model)
    reference = evaluate.evaluate(model, held_out, preprocessing, ep="cpu")
    openvino = evaluate.evaluate(model, held_out, preprocessing, runtime_name="openvino")
    assert reference.top1 > 50.0  # a model whose classes mean something
    assert reference.agreement(openvino) >= 95.0


def test_eval_runtime_openvino_on_a_fixed_batch_model(tmp_path, tiny_path, sample_dir):
    import onnx

    proto = onnx.load(str(tiny_path))
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "fixed.onnx"
    onnx.save(proto, str(fixed))
    record = tmp_path / "result.json"
    result = subprocess.run(
        [sys.executable, "-m", "onnxq", "-q", "eval", str(fixed), "--data", str(sample_dir),
         "--limit", "8", "--runtime", "openvino", "--json", str(record)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    fields = json.loads(record.read_text())
    assert fields["images"] == 8 and fields["provider"].startswith("OpenVINO CPU")
    refused = subprocess.run(
        [sys.executable, "-m", "onnxq", "eval", str(fixed), "--data", str(sample_dir),
         "--runtime", "openvino", "--fold-weights"], capture_output=True, text=True,
    )
    assert refused.returncode == 2 and "ONNX Runtime settings" in refused.stderr


def test_compile_errors_keep_the_message_not_the_source_locations():
    from onnxq.io.openvino_runtime import error_summary

    error = RuntimeError(
        "Exception from src/inference/src/cpp/core.cpp:132:\n"
        "Check 'false' failed at src/frontends/common_translators/src/unconverted_ops_report.cpp:151:\n"
        "-- DequantizeLinear-21 with a message:\n"
        "DequantizeLinear doesn't support case when dimension of X at axis 1 (27) cannot be "
        "divided by block_size (18)\n\nSummary:\n"
    )
    assert error_summary(error) == (
        "-- DequantizeLinear-21 with a message: DequantizeLinear doesn't support case when "
        "dimension of X at axis 1 (27) cannot be divided by block_size (18)"
    )
    assert error_summary(RuntimeError("Exception from a.cpp:1:\n")) == "unknown error"


def test_a_form_openvino_cannot_read_fails_in_one_line_that_names_deploy(tiny_path, sample_dir, tmp_path):
    """A group size that does not divide a layer's inputs (conv1 has 3) leaves a smaller last
    block, which ONNX allows and OpenVINO's reader refuses; onnxq deploy's output compiles."""
    quantized = tmp_path / "gs2.onnx"
    deployed = {runtime: tmp_path / f"gs2_{runtime}.onnx" for runtime in ("onnxruntime", "openvino")}
    commands = [
        ["quantize", str(tiny_path), "-o", str(quantized), "--calib", str(sample_dir),
         "--calib-size", "8", "--wbits", "4", "--scheme", "per-group-affine", "--gs", "2",
         "--rounding", "nearest"],
        *(["deploy", str(quantized), "-o", str(path), "--runtime", runtime]
          for runtime, path in deployed.items()),
    ]
    for command in commands:
        subprocess.run([sys.executable, "-m", "onnxq", "-q", *command], check=True,
                       capture_output=True)
    results = [
        subprocess.run([sys.executable, "-m", "onnxq", "-q", "eval", str(path), "--data",
                        str(sample_dir), "--limit", "4", "--runtime", "openvino"],
                       capture_output=True, text=True)
        for path in (quantized, *deployed.values())
    ]
    assert results[0].returncode == 2
    message = results[0].stderr.strip()
    assert message.count("\n") == 0 and "cannot be divided by block_size" in message
    assert "onnxq deploy MODEL -o OUT --runtime openvino writes a form OpenVINO compiles" in message
    assert all(result.returncode == 0 for result in results[1:]), [r.stderr for r in results]
    # for OpenVINO only conv1 (3 inputs in groups of 2) is folded; the rest stays 4-bit
    int4 = {runtime: [v.name for v in modelio.load_model(path).graph.initializers.values()
                      if v.dtype in (ir.DataType.INT4, ir.DataType.UINT4)]
            for runtime, path in deployed.items()}
    assert int4["onnxruntime"] == [] and "conv2.weight_quantized" in int4["openvino"]
    assert not any(name.startswith("conv1.weight") for name in int4["openvino"])


def test_decomposed_affine_kxk_weights_compile(tiny_path, sample_images):
    """conv2 is 3×3 over 8 channels: at gs 4 its codes are one row per group, dequantized
    per-axis and reshaped, which OpenVINO compiles (its blocked form with a dequantized scale
    and zero points it does not)."""
    model = modelio.load_model(tiny_path)
    config = QuantConfig(weights=Scheme.parse("per-group-affine", bits=4, group_size=4),
                         features=Scheme.parse("per-tensor-affine", bits=8), decompose_scales=True,
                         rounding="nearest", calib_size=8)
    quantize(model, config, sample_images.head(8))
    conv2 = {node.name: node for node in model.graph}["conv2"]
    assert conv2.inputs[1].producer().op_type == "Reshape"
    assert "block_size" not in conv2.inputs[1].producer().inputs[0].producer().attributes
    images = sample_images.head(16)
    preprocessing = modelio.get_preprocessing(model)
    reference = evaluate.evaluate(model, images, preprocessing, ep="cpu")
    openvino = evaluate.evaluate(model, images, preprocessing, runtime_name="openvino")
    assert reference.agreement(openvino) >= 90.0
