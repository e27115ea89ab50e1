"""Fault injection: every class of failure a user can meet ends in one line, exit status 2, no
traceback, no new file and an unchanged earlier output (onnxq.failures lists the classes)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnxq import cli
from onnxq.base import outputs
from onnxq.io import preprocessing

EXISTING = b"an earlier output that must survive"


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # {model}, {out}, {images}, {bad} and {tmp} are filled in
    fragment: str  # what the one line must say
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


def _no_space(monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "replace", full)


def _read_only(monkeypatch):
    monkeypatch.setattr(outputs, "_writable", lambda folder: False)


def _unlistable(monkeypatch):
    import onnxq.io.data

    monkeypatch.setattr(onnxq.io.data, "_listable", lambda folder: False)


def _singular_moments(monkeypatch):
    import onnxq.core.rounding

    def singular(*args):
        raise np.linalg.LinAlgError("the layer's input second moment is not positive definite")

    monkeypatch.setattr(onnxq.core.rounding, "_inverse_cholesky", singular)


def _small_pixel_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 64×64 image is then a "bomb"


Q = ("quantize", "{model}", "-o", "{out}/existing.onnx")
CALIB = ("--calib", "{images}", "--calib-size", "4")
CASES = [
    # 1. outputs that cannot be written, found before the work
    Case("output-is-folder", ("quantize", "{model}", "-o", "{out}", *CALIB), "is a folder"),
    Case("output-trailing-slash", ("quantize", "{model}", "-o", "{out}/new/", *CALIB), "is a folder"),
    Case("output-folder-missing", ("quantize", "{model}", "-o", "{out}/nowhere/x.onnx", *CALIB), "no such folder"),
    Case("output-read-only", (*Q, *CALIB), "permission denied", _read_only),
    Case("output-disk-full", (*Q, *CALIB), "no space left", _no_space),
    Case("deploy-output-is-folder", ("deploy", "{model}", "-o", "{out}"), "is a folder"),
    Case("export-output-is-folder", ("export", "resnet18", "-o", "{out}/", "--random-weights"), "is a folder"),
    Case("sweep-out-is-a-file", ("sweep", "{tmp}/spec.toml", "--data", "{images}", "--out", "{out}/existing.onnx"), "not a folder"),
    # 3. eval --json
    Case("eval-json-is-folder", ("eval", "{model}", "--data", "{images}", "--json", "{out}", "--limit", "2"), "is a folder"),
    Case("eval-json-disk-full", ("eval", "{model}", "--data", "{images}", "--json", "{out}/r.json", "--limit", "2"), "no space left", _no_space),
    # 4. external data
    Case("external-data-missing", (*Q, *CALIB), "cannot read its weights"),
    # 5. models that are not one 4-D float image classifier
    Case("input-2d", (*Q, *CALIB), "one float32 input"),
    Case("two-inputs", (*Q, *CALIB), "has 2"),
    Case("fp16-model", (*Q, *CALIB), "one float32 input"),
    Case("missing-weight", (*Q, *CALIB), "invalid ONNX model"),
    Case("checker-failure", (*Q, *CALIB), "invalid ONNX model"),
    # 6. already quantized
    Case("quantized-by-onnxq", (*Q, *CALIB), "already quantized"),
    Case("quantized-by-onnxruntime", (*Q, *CALIB), "already quantized"),
    # 7. flag ranges
    Case("batch-size-zero", (*Q, *CALIB, "--batch-size", "0"), "--batch-size"),
    Case("batch-size-negative", (*Q, *CALIB, "--batch-size", "-1"), "--batch-size"),
    Case("limit-zero", ("eval", "{model}", "--data", "{images}", "--limit", "0"), "--limit"),
    Case("limit-negative", ("eval", "{model}", "--data", "{images}", "--limit", "-3"), "--limit"),
    # 8. images
    Case("decompression-bomb", (*Q, "--calib", "{bad}", "--calib-size", "1"), "image too large", _small_pixel_limit),
    Case("folder-not-enterable", (*Q, *CALIB), "permission denied", _unlistable),
    # 9. silently wrong before
    Case("zero-std", (*Q, *CALIB, "--preprocess", '{{"resize": 36, "crop": 32, "interpolation": "bilinear", "mean": [0, 0, 0], "std": [0, 1, 1]}}'), "std must be positive"),
    Case("nan-weights", (*Q, "--weight-only"), "NaN or infinite"),
    # 10. usage
    Case("unknown-option", (*Q, "--bogus"), "No such option: --bogus"),
    Case("bad-integer", (*Q, "--wbits", "four"), "Invalid value for '--wbits'"),
    Case("missing-argument", ("quantize",), "Missing argument"),
    Case("repeated-flag", (*Q, "--wbits", "4", "--wbits", "8"), "--wbits given twice"),
    # 12. numerical failures and spec errors
    Case("gptq-linalg", (*Q, *CALIB, "--wbits", "4", "--scheme", "per-channel-affine"), "numerical failure", _singular_moments),
    Case("sweep-spec-error", ("sweep", "{tmp}/bad.toml", "--data", "{images}", "--out", "{out}/sweep"), "bad.toml: table 1, row 1: wbits must be an integer"),
]


def _model_for(case: str, tmp: Path, tiny: Path) -> Path:
    """The input model of a case: the tiny CNN, or one made broken in the way the case says."""
    path = tmp / f"{case}.onnx"
    model = onnx.load(str(tiny))
    if case == "external-data-missing":
        onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
        (tmp / "weights.bin").unlink()
    elif case in ("input-2d", "two-inputs", "fp16-model", "missing-weight", "checker-failure"):
        onnx.save(_broken(case), str(path))
    elif case == "quantized-by-onnxq":
        subprocess.run([sys.executable, "-m", "onnxq", "-q", "quantize", str(tiny), "-o", str(path),
                        "--weight-only"], check=True, capture_output=True)
    elif case == "quantized-by-onnxruntime":
        from onnxruntime.quantization import quantize_dynamic

        quantize_dynamic(str(tiny), str(path))
    elif case == "nan-weights":
        weight = next(init for init in model.graph.initializer if len(init.dims) == 4)
        values = numpy_helper.to_array(weight).copy()
        values.flat[0] = np.nan
        weight.CopyFrom(numpy_helper.from_array(values, weight.name))
        onnx.save(model, str(path))
    else:
        return tiny
    return path


def _broken(case: str) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])
    inputs, nodes, initializers = [image], [helper.make_node("Conv", ["x", "w"], ["y"])], [weight]
    if case == "input-2d":
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])]
        output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        initializers = [numpy_helper.from_array(np.ones((16, 4), np.float32), "w")]
    elif case == "two-inputs":
        inputs.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 4, 6, 6]))
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "x2"], ["y"])]
    elif case == "fp16-model":
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 8, 8])]
        output = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4, 6, 6])
        initializers = [numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float16), "w")]
    elif case == "missing-weight":
        nodes = [helper.make_node("Conv", ["x", "not_there"], ["y"])]
    elif case == "checker-failure":
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[5, 5, 5])]
    graph = helper.make_graph(nodes, "broken", inputs, [output], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """``onnxq ARGS`` in this process (so faults can be patched in): exit status and stderr."""
    handler = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(sys, "argv", ["onnxq", *args])
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.main()
    finally:
        signal.signal(signal.SIGTERM, handler)
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_failure_is_one_line(case, tmp_path, tiny_path, sample_images, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "existing.onnx").write_bytes(EXISTING)
    images = tmp_path / "images"
    images.mkdir()
    for source in sample_images.files[:4]:
        (images / source.name).symlink_to(source)
    bomb = tmp_path / "bomb"
    bomb.mkdir()
    Image.new("RGB", (64, 64)).save(bomb / "n01440764_big.png")
    (tmp_path / "spec.toml").write_text(f'[models.t]\npath = "{tiny_path}"\n[[table]]\nrows = [{{}}]\n')
    (tmp_path / "bad.toml").write_text(f'[models.t]\npath = "{tiny_path}"\n[[table]]\nrows = [{{ wbits = "x" }}]\n')
    model = _model_for(case.id, tmp_path, tiny_path)
    names = {"model": model, "out": out, "images": images, "bad": bomb, "tmp": tmp_path}
    args = [arg.format(**names) for arg in case.args]
    if case.patch is not None:
        case.patch(monkeypatch)
    before = sorted(p.name for p in out.iterdir())

    status, stderr = run_cli(["-q", *args], monkeypatch, capsys)

    lines = stderr.strip().splitlines()
    assert status == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("onnxq: error: "), stderr
    assert case.fragment in lines[0]
    assert "Traceback" not in stderr
    assert sorted(p.name for p in out.iterdir()) == before  # no new file, no temporary
    assert (out / "existing.onnx").read_bytes() == EXISTING


def test_unexpected_errors_are_one_line_with_a_debug_hint(tiny_path, tmp_path, monkeypatch, capsys):
    import onnxq.pipeline.quantize

    def broken(*args, **kwargs):
        raise RuntimeError("something onnxq did not foresee\nsecond line")

    monkeypatch.setattr(onnxq.pipeline.quantize, "quantize", broken)
    status, stderr = run_cli(["quantize", str(tiny_path), "-o", str(tmp_path / "x.onnx"), "--weight-only"],
                             monkeypatch, capsys)
    assert status == 1
    assert stderr.strip() == ("onnxq: error: unexpected RuntimeError: something onnxq did not foresee "
                              "(rerun with --debug for the traceback)")
    with pytest.raises(RuntimeError):
        cli.main(["--debug", "quantize", str(tiny_path), "-o", str(tmp_path / "x.onnx"), "--weight-only"])


def test_ctrl_c_prints_interrupted_and_exits_130(tiny_path, tmp_path, monkeypatch, capsys):
    import onnxq.io.data

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnxq.io.data, "find_images", interrupted)
    status, stderr = run_cli(["quantize", str(tiny_path), "-o", str(tmp_path / "x.onnx"), "--calib", str(tmp_path)],
                             monkeypatch, capsys)
    assert status == 130 and stderr.strip().splitlines()[-1] == "onnxq: interrupted"
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_a_write_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.onnx"
    script = (
        "import os, signal, sys\n"
        "from onnxq import cli\n"
        "from onnxq.base import outputs\n"
        "signal.signal(signal.SIGTERM, cli._terminated)\n"
        "with outputs.atomic_write(sys.argv[1]) as temporary:\n"
        "    temporary.write_bytes(b'partial')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    signal.pause()\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 143
    assert result.stderr.strip() == "onnxq: terminated"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_model_respects_the_umask(tiny_path, tmp_path, monkeypatch, capsys, umask, mode):
    output = tmp_path / "x.onnx"
    previous = os.umask(umask)
    try:
        status, stderr = run_cli(["-q", "quantize", str(tiny_path), "-o", str(output), "--weight-only"],
                                 monkeypatch, capsys)
    finally:
        os.umask(previous)
    assert status == 0, stderr
    assert output.stat().st_mode & 0o777 == mode


def test_replacing_a_file_keeps_its_mode(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("{}")
    target.chmod(0o640)
    outputs.write_text(target, json.dumps({"top1": 1.0}))
    assert target.stat().st_mode & 0o777 == 0o640 and json.loads(target.read_text()) == {"top1": 1.0}


@pytest.mark.parametrize(
    "mode, make",
    [
        ("I;16", lambda: Image.fromarray(np.full((40, 40), 32896, np.uint16))),  # 32896/257 = 128
        ("P", lambda: Image.new("RGB", (40, 40), (128, 128, 128)).convert("P", palette=Image.Palette.ADAPTIVE)),
        ("LA", lambda: Image.new("LA", (40, 40), (128, 255))),
        ("CMYK", lambda: Image.new("RGB", (40, 40), (128, 128, 128)).convert("CMYK")),
    ],
)
def test_images_of_every_mode_read_as_their_grey_value(tmp_path, mode, make):
    image = make()
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    image.save(path)
    array = np.asarray(preprocessing.read_rgb(str(path)), dtype=int)
    assert array.shape == (40, 40, 3)
    assert np.abs(array - 128).max() <= 1, f"{mode} read as {array.min()}..{array.max()}"


def test_transparent_pixels_become_white(tmp_path):
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(path)
    assert np.asarray(preprocessing.read_rgb(str(path))).min() == 255


def test_ctrl_c_while_the_command_line_loads(monkeypatch, capsys):
    import types

    from onnxq import entry

    loading = types.ModuleType("onnxq.cli")

    def interrupted(name):
        raise KeyboardInterrupt

    loading.__getattr__ = interrupted  # the import is interrupted half way
    monkeypatch.setitem(sys.modules, "onnxq.cli", loading)
    with pytest.raises(SystemExit) as exit_:
        entry.main()
    assert exit_.value.code == 130 and capsys.readouterr().err == "onnxq: interrupted\n"
