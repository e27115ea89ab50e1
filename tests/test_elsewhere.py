"""Models from elsewhere through the whole command line: quantize (W8A8 and 4-bit per-group,
``--reorder auto --verify``), eval and report, with no traceback; after loading no BatchNorm is
left, nine Convs in ten read a quantized weight, and the W8A8 logits keep a mean cosine of 0.99
with fp32 on real images. The corpus is ``tests/elsewhere.py``; the suite runs two of its models,
``pytest -m corpus`` all of them (about 15 minutes on 2 cores)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from elsewhere import light_sources, reads_quantized_weight, torch_sources

from onnxq.pipeline import modelio
from onnxq.reporting import evaluate

FAST = {"light_squeezenet", "resnet18_opset13_b1"}
SOURCES = light_sources() + torch_sources()
W4 = ["--wbits", "4", "--scheme", "per-group-affine", "--gs", "8", "--rounding", "nearest"]


def onnxq(*args):
    result = subprocess.run(
        [sys.executable, "-m", "onnxq", "-q", *map(str, args)], capture_output=True, text=True
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory, sample_images):
    folder = tmp_path_factory.mktemp("calibration")
    for path in sample_images.files[:8]:
        (folder / path.name).symlink_to(path)
    return folder


@pytest.mark.parametrize(
    "source",
    [s if s.name in FAST else pytest.param(s, marks=[pytest.mark.slow, pytest.mark.corpus])
     for s in SOURCES],
    ids=lambda s: s.name,
)
def test_model_from_elsewhere(source, tmp_path_factory, calibration_dir, sample_images, sample_dir):
    folder = tmp_path_factory.mktemp(source.name)
    path = source.path(folder)
    for name, extra in (("w8a8", []), ("w4", W4)):
        output = folder / f"{name}.onnx"
        given = ["--preprocess", source.preprocess] if source.preprocess else []
        onnxq("quantize", path, "-o", output, "--calib", calibration_dir, "--calib-size", 8,
              "--reorder", "auto", "--verify", *given, *extra)
        onnxq("eval", output, "--data", sample_dir, "--limit", 4)
        onnxq("report", output)
        model = modelio.load_model(output)
        assert not [n for n in model.graph if n.op_type == "BatchNormalization"]
        convs = [n for n in model.graph if n.op_type == "Conv"]
        assert sum(map(reads_quantized_weight, convs)) >= 0.9 * len(convs)
    held_out = sample_images.split(400)[1].head(16)
    preprocessing = modelio.get_preprocessing(modelio.load_model(folder / "w8a8.onnx"))
    cosines = evaluate.logit_cosines(str(path), str(folder / "w8a8.onnx"), held_out, preprocessing)
    # EfficientNet-Lite0's real weights: 0.97 on the worst image, as for onnxq's own export
    assert cosines.mean() >= 0.99 and cosines.min() >= 0.95
