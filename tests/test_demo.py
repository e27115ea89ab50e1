"""The README's first command: ``onnxq demo`` on the images that the foolbox wheel ships."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from markdown_tables import parse_tables

from onnxq.base import host
from onnxq.core.config import QuantConfig
from onnxq.pipeline import modelio


@pytest.mark.slow
def test_demo_runs_the_main_job_on_real_images(tmp_path):
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "onnxq", "demo", "--workdir", str(workdir), "--ep", "cpu"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    (table,) = parse_tables(result.stdout)
    rows = [dict(zip(table.header, row)) for row in table.rows]
    assert [row["w_bit"] for row in rows] == ["float32", "8", "4", "4"]
    top1 = [float(row["top1 acc"].split("(")[0]) for row in rows]
    bits = [float(row["Equivalent wbit"]) for row in rows]
    # 20 images: one image is 5 points. fp32 gets 17 of them right (85.0).
    assert top1[0] >= 85.0
    assert top1[1] >= top1[0] - 5.0  # W8A8
    assert min(top1[2:]) >= top1[0] - 15.0  # W4A8, GPTQ
    reduced = host.int8_kernels_saturate()  # 7-bit codes where int8 kernels saturate
    assert bits[1] == pytest.approx(7.2 if reduced else 8.2, abs=0.1)  # + per-channel scales
    assert bits[2] < 4.3 and bits[3] < 4.7
    agreement = [float(row["fp32 agreement"].rstrip("%")) for row in rows[1:]]
    assert agreement[0] >= 90.0 and min(agreement) >= 80.0  # W8A8 keeps fp32's class
    assert "Calibrated and evaluated on the same 20 images" in result.stdout
    # the W8A8 row is the CLI's default W8A8: fused placement, restricted grid, nearest
    # (GPTQ for the reduced range of CPUs whose int8 kernels saturate)
    recorded = modelio.load_model(workdir / "efficientnet_lite0_w8a8.onnx").metadata_props
    config = QuantConfig.from_dict(json.loads(recorded["onnxq.quantization"]))
    assert (config.placement, config.rounding, config.weights.symmetric_range) == (
        "fused", "gptq" if reduced else "nearest", "restricted")
    for tag in ("w8a8", "w4a8_per_channel", "w4a8_gs32"):
        assert (workdir / f"efficientnet_lite0_{tag}.onnx").is_file()
