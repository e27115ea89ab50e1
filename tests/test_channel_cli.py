"""``onnxq quantize --smooth/--reorder`` as a user meets it: summary, metadata, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest


def onnxq(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "onnxq", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


W4_GROUPS = ("--wbits", 4, "--scheme", "per-group-affine", "--gs", 4)


def test_smooth_and_reorder_end_to_end(tmp_path, tiny_path, sample_dir):
    outputs = []
    for run in range(2):
        output = tmp_path / f"q{run}.onnx"
        result = onnxq(
            "-q", "quantize", tiny_path, "-o", output, "--calib", sample_dir, "--calib-size", 8,
            *W4_GROUPS, "--smooth", "--alpha", 0.5, "--smooth-mul", "--reorder", "absmax", "--verify",
            "--decompose-scales",
        )
        assert result.returncode == 0, result.stderr
        outputs.append(output.read_bytes())
    # The one determinism test of the fast suite: smooth, reorder, GPTQ (the 4-bit default with
    # images) and scale decomposition in one run, twice, byte-identical.
    assert outputs[0] == outputs[1]

    lines = result.stdout.splitlines()
    assert lines[1].startswith("channel sets: 5 (smooth: ")
    by_set = {line.split()[0]: line for line in lines[2:]}
    assert set(by_set) == {"input", "conv1.out", "conv2.out", "dw3.out", "logits"}
    assert "smooth skipped: graph input input" in by_set["input"]
    assert "smooth mul" in by_set["conv2.out"] and "Clip relu2 does not commute" in by_set["conv2.out"]
    assert "tensors conv2.out, relu2.out, pw4.out, add.out" in by_set["conv2.out"]
    assert "producers conv2, pw4; consumers dw3, fc" in by_set["conv2.out"]

    model = onnx.load(str(tmp_path / "q1.onnx"))
    onnx.checker.check_model(model, full_check=True)
    metadata = {p.key: p.value for p in model.metadata_props}
    config = json.loads(metadata["onnxq.quantization"])
    assert (config["smooth_alpha"], config["reorder"], config["smooth_mul"]) == (0.5, "absmax", True)
    assert (config["rounding"], config["decompose_scales"]) == ("gptq", True)
    records = {r["name"]: r for r in json.loads(metadata["onnxq.channel_sets"])}
    assert records["conv2.out"]["smooth"]["status"] == "mul"
    assert records["conv2.out"]["smooth"]["inserted"] == ["relu2.out.smooth", "flat.out.smooth"]
    assert records["conv2.out"]["producers"] == ["conv2", "pw4"]
    assert records["logits"]["reorder"] == {"status": "skipped", "reason": "graph output logits"}
    assert {n.op_type for n in model.graph.node if n.name.endswith(".smooth")} == {"Mul"}


def test_weight_keyed_reorder_needs_no_images(tmp_path, tiny_path):
    output = tmp_path / "q.onnx"
    result = onnxq("-q", "quantize", tiny_path, "-o", output, "--weight-only", *W4_GROUPS,
                   "--reorder", "weight-absmax")
    assert result.returncode == 0, result.stderr
    assert "channel sets: 5 (reorder: 2 skipped, 3 permuted)" in result.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--smooth", "--alpha", "2"], "--alpha must be 'auto' or between 0 and 1"),
        (["--smooth", "--alpha", "strong"], "--alpha must be 'auto' or a number"),
        (["--smooth", "--act-scale", "absmax*2"], "unknown --act-scale"),
        (["--alpha", "0.5"], "need --smooth"),
        (["--smooth-mul"], "need --smooth"),
        (["--reorder", "size"], "unknown --reorder key"),
        (["--weight-only", "--smooth"], "--smooth needs calibration images"),
        (["--weight-only", "--reorder", "absmax"], "--reorder absmax needs calibration images"),
        (["--scheme", "per-group-affine", "--gs", "4", "--scale-bits", "3"], "--scale-bits needs --decompose-scales"),
    ],
)
def test_user_errors(tmp_path, tiny_path, args, fragment):
    output = tmp_path / "q.onnx"
    result = onnxq("quantize", tiny_path, "-o", output, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxq: error: ") and fragment in lines[0]
    assert not output.exists()


def test_help_lists_the_flags():
    help_text = onnxq("quantize", "--help").stdout
    for flag in ("--smooth", "--alpha", "--act-scale", "--smooth-mul", "--reorder", "--verify"):
        assert flag in help_text
