"""One source of truth for defaults: the CLI, the Python API, a sweep row and the demo make the
same model from the same settings, and the output records the resolved settings."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from onnxq.base import host, metadata
from onnxq.base.errors import OnnxqError
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.experiments.demo import demo_config
from onnxq.experiments.experiment import run_row
from onnxq.experiments.spec import build_config
from onnxq.pipeline import modelio
from onnxq.pipeline.quantize import quantize

CALIBRATION = 8

#: (CLI flags, sweep row keys, the demo row) of the same configuration.
CASES = {
    "w8a8": ([], {}, "w8a8"),
    "w4a8": (
        ["--wbits", "4", "--scheme", "per-channel-affine", "--keep-8bit", "last"],
        {"wbits": 4, "scheme": "per-channel-affine", "keep_8bit": "last"},
        "w4a8_per_channel",
    ),
}
#: On CPUs whose int8 kernels saturate, 8-bit weights keep 7-bit codes and so get GPTQ.
REDUCED = host.int8_kernels_saturate()
RESOLVED = {
    "w8a8": {"placement": "fused", "rounding": "gptq" if REDUCED else "nearest",
             "bias_correction": REDUCED, "reduce_range": REDUCED},
    "w4a8": {"placement": "inputs", "rounding": "gptq", "bias_correction": True,
             "reduce_range": False},
}


def _recorded(path) -> QuantConfig:
    return QuantConfig.from_dict(json.loads(modelio.load_model(path).metadata_props[metadata.QUANTIZATION]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_front_end_makes_the_same_model(case, tiny_path, sample_dir, sample_images, tmp_path):
    flags, row, demo_tag = CASES[case]
    outputs = {name: tmp_path / f"{name}.onnx" for name in ("cli", "api", "sweep", "demo")}
    subprocess.run(
        [sys.executable, "-m", "onnxq", "-q", "quantize", str(tiny_path), "-o", str(outputs["cli"]),
         "--calib", str(sample_dir), "--calib-size", str(CALIBRATION), *flags],
        check=True, capture_output=True,
    )
    api_config = QuantConfig(
        weights=Scheme.parse("per-channel-affine" if flags else "per-channel-symmetric",
                             bits=4 if flags else 8),
        features=Scheme.parse("per-tensor-affine", bits=8),
        calib_size=CALIBRATION,
        keep_8bit=("last",) if flags else (),
    )
    model = modelio.load_model(tiny_path)
    applied = quantize(model, api_config, sample_images).config
    modelio.save_model(model, outputs["api"])

    # a sweep plans the resolved config and runs it as a row
    sweep_config = build_config("test", {**row, "calib_size": CALIBRATION})
    planned = QuantConfig.from_dict(sweep_config.resolved(calibrated=True).to_dict())
    run_row(tiny_path, planned, sample_images, sample_images.head(4), outputs["sweep"], ep="cpu")
    demo = dataclasses.replace(demo_config(demo_tag), calib_size=CALIBRATION)
    demo_row = run_row(tiny_path, demo, sample_images, sample_images.head(4), outputs["demo"], ep="cpu")

    assert api_config == sweep_config == demo  # the same unresolved settings ...
    recorded = {name: _recorded(path) for name, path in outputs.items()}
    assert all(config == applied for config in recorded.values())  # ... resolved the same way
    assert demo_row.config == applied and applied.is_resolved
    for key, value in RESOLVED[case].items():
        assert getattr(applied, key) == value
    contents = {name: path.read_bytes() for name, path in outputs.items()}
    assert len(set(contents.values())) == 1, "the four front ends wrote different models"


def test_resolution_rules():
    w4 = Scheme.parse("per-channel-affine", bits=4)
    a8 = Scheme.parse("per-tensor-affine", bits=8)
    assert QuantConfig(weights=w4, features=a8).resolved(calibrated=False).rounding == "nearest"
    assert not QuantConfig(weights=w4, features=a8).resolved(calibrated=False).bias_correction
    explicit = QuantConfig(weights=w4, features=a8, placement="fused", rounding="gptq",
                           bias_correction=False, reduce_range=False)
    assert explicit.resolved(calibrated=True) == explicit  # explicit settings stay
    resolved = QuantConfig(weights=w4).resolved(calibrated=True)
    assert resolved.resolved(calibrated=False) == resolved  # resolving twice changes nothing
    assert not QuantConfig(weights=w4).is_resolved and resolved.is_resolved


def test_sweep_rows_accept_every_value_the_cli_accepts():
    config = build_config("t", {"rounding": "auto", "placement": "auto", "symmetric_range": "full"})
    assert config.rounding == "auto" and config.placement == "auto"
    assert config.weights.symmetric_range == config.features.symmetric_range == "full"
    with pytest.raises(OnnxqError, match="t: unknown symmetric range 'half'"):
        build_config("t", {"symmetric_range": "half"})


def test_cli_symmetric_range_is_recorded(tiny_path, tmp_path):
    output = tmp_path / "full.onnx"
    subprocess.run(
        [sys.executable, "-m", "onnxq", "-q", "quantize", str(tiny_path), "-o", str(output),
         "--weight-only", "--symmetric-range", "full"],
        check=True, capture_output=True,
    )
    weights = _recorded(output).weights
    assert weights.symmetric_range == "full" and not weights.restricted
    dq = next(node for node in modelio.load_model(output).graph if node.op_type == "DequantizeLinear")
    assert dq.metadata_props["onnxq.symmetric_range"] == "full"
