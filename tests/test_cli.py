"""The command line as a user meets it: exit codes, one-line errors, no partial outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from onnxq.base import metadata
from onnxq.io import data
from onnxq.io.preprocessing import PRESETS
from onnxq.pipeline import modelio
from onnxq.reporting import evaluate


def onnxq(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "onnxq", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def assert_user_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxq: error: "), result.stderr
    assert fragment in lines[0]


@pytest.fixture()
def not_onnx(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_text("hello")
    return path


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["missing.onnx"], "no such file"),
        (["{bad}"], "not an ONNX model"),
        (["{tiny}", "--scheme", "per-block-affine"], "unknown scheme"),
        (["{tiny}", "--scheme", "per-group-affine"], "needs a group size"),
        (["{tiny}", "--scheme", "per-group-affine", "--gs", "0"], "positive integer"),
        (["{tiny}", "--scheme", "per-channel-affine", "--gs", "8"], "only applies to per-group"),
        (["{tiny}", "--wbits", "1"], "bit width 1"),
        (["{tiny}"], "needs calibration images"),
        (["{tiny}", "--calib", "{empty}"], "no images found"),
        (["{tiny}", "--calib", "{tmp}/nowhere"], "no such folder"),
        (["{tiny}", "--weight-only", "--keep-8bit", "conv99"], "--keep-8bit"),
        (["{tiny}", "--weight-only", "--ops", "Conv,Softmax"], "cannot quantize op type"),
        (["{tiny}", "--f-observer", "median"], "unknown feature observer 'median'"),
    ],
)
def test_quantize_user_errors_leave_no_output(tmp_path, tiny_path, not_onnx, args, fragment):
    (tmp_path / "empty").mkdir()
    output = tmp_path / "out.onnx"
    names = {"tiny": tiny_path, "bad": not_onnx, "empty": tmp_path / "empty", "tmp": tmp_path}
    args = [a.format(**names) for a in args]
    result = onnxq("quantize", *args, "-o", output, cwd=tmp_path)
    assert_user_error(result, fragment)
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir() if p.suffix != ".onnx" and p.name != "empty"] == []


def test_quantize_and_eval_end_to_end(tmp_path, tiny_path, sample_dir):
    output = tmp_path / "q.onnx"
    result = onnxq(
        "-q", "quantize", tiny_path, "-o", output, "--calib", sample_dir, "--calib-size", 8,
        "--wbits", 4, "--scheme", "per-group-affine", "--gs", 4, "--observer", "mse",
        "--fbits", 6, "--f-scheme", "per-channel-affine", "--f-observer", "mse",
    )
    assert result.returncode == 0, result.stderr
    assert "5 weights (4-bit per-group-affine gs=4 (mse))" in result.stdout
    assert result.stderr == ""
    onnx.checker.check_model(onnx.load(str(output)), full_check=True)
    record = tmp_path / "eval.json"
    result = onnxq("-q", "eval", output, "--data", sample_dir, "--limit", 16, "--json", record, "--ep", "cpu")
    assert result.returncode == 0, result.stderr
    assert "16 images" in result.stdout and "CPUExecutionProvider" in result.stdout
    fields = json.loads(record.read_text())
    assert fields["images"] == 16 and fields["provider"] == "CPUExecutionProvider"
    # The command line reports what the library measures on the same images.
    preprocessing = modelio.get_preprocessing(modelio.load_model(output)) or PRESETS["torchvision"]
    expected = evaluate.evaluate(
        str(output), data.find_images(sample_dir).head(16), preprocessing, ep="cpu"
    )
    assert (fields["top1"], fields["top5"]) == (expected.top1, expected.top5)


def test_default_output_name(tmp_path, tiny_path):
    model = tmp_path / "net.onnx"
    model.write_bytes(tiny_path.read_bytes())
    result = onnxq("-q", "quantize", model, "--weight-only", "--wbits", 4, "--scheme", "per-channel-affine")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "net_w4a32.onnx").exists()


@pytest.mark.parametrize(("fbits", "observer"), [(4, "mse"), (6, "mse"), (8, "minmax")])
def test_feature_observer_defaults_to_mse_under_8_bits(tmp_path, tiny_path, sample_dir, fbits, observer):
    output = tmp_path / "q.onnx"
    result = onnxq("-q", "quantize", tiny_path, "-o", output, "--calib", sample_dir,
                   "--calib-size", 4, "--wbits", 8, "--fbits", fbits)
    assert result.returncode == 0, result.stderr
    assert f"feature tensors ({fbits}-bit per-tensor-affine ({observer}))" in result.stdout
    recorded = json.loads(modelio.load_model(output).metadata_props[metadata.QUANTIZATION])
    assert recorded["features"]["observer"] == observer


def test_verbose_logs_what_each_pass_changed(tmp_path, tiny_path, sample_dir):
    args = ["quantize", tiny_path, "-o", tmp_path / "q.onnx", "--calib", sample_dir,
            "--calib-size", 4, "--wbits", 4, "--scheme", "per-group-affine", "--gs", 8,
            "--decompose-scales"]
    quiet = onnxq("-q", *args)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    verbose = onnxq("-q", "-v", *args)
    assert verbose.returncode == 0, verbose.stderr
    log = " ".join(verbose.stderr.split())  # rich wraps long lines
    assert "onnxq.passes.quantize_weights: quantized 5 weights (3 with chosen codes)" in log
    assert "onnxq.passes.decompose_scales: decomposed the group scales of 2 weights" in log
    assert "onnxq.passes.insert_feature_qdq: inserted Q/DQ pairs on 5 feature tensors" in log
    assert "onnxq.passes.correct_bias: corrected the bias of 5 layers" in log


def test_eval_needs_labels(tmp_path, tiny_path, sample_images):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(sample_images.files[0].read_bytes())
    assert_user_error(onnxq("eval", tiny_path, "--data", folder), "cannot tell the class")


def test_export_errors(tmp_path):
    assert_user_error(onnxq("export", "resnet1800", cwd=tmp_path), "unknown model")
    output = tmp_path / "x.onnx"
    assert_user_error(onnxq("export", "resnet18", "-o", output, "--weights", "/nonexistent.pth"), "no such weights file")
    # the output is checked before torch is even imported
    assert_user_error(onnxq("export", "resnet18", "-o", "/nonexistent/dir/x.onnx", "--weights", "/nonexistent.pth"),
                      "no such folder for the output")
    assert list(tmp_path.iterdir()) == []


def test_version_and_help():
    assert onnxq("--version").stdout.startswith("onnxq ")
    help_text = onnxq("quantize", "--help").stdout
    for flag in ("--wbits", "--scheme", "--gs", "--observer", "--fbits", "--f-scheme", "--calib-size", "--keep-8bit"):
        assert flag in help_text
