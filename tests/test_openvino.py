"""OpenVINO as a second runtime: ``onnxq eval --runtime openvino`` on onnxq's forms.

OpenVINO's CPU plugin must compile the models onnxq writes and agree with ONNX Runtime on the
top-1 class of real images (its int8 rounding and bf16 precision hint differ a little).
"""

from __future__ import annotations

import json
import subprocess
import sys

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
