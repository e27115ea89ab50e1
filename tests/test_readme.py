"""The README's Python API example runs as written, on a small model and the sample images."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
from tiny_models import tiny_cnn

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_api_example_runs(tmp_path, sample_dir, monkeypatch, capsys):
    onnx.save(tiny_cnn(classes=1000), str(tmp_path / "effnet.onnx"))
    (tmp_path / "IMAGES").symlink_to(sample_dir)
    monkeypatch.chdir(tmp_path)
    exec(compile(python_api_example(), "README.md", "exec"), {})
    assert (tmp_path / "effnet_w4a8.onnx").is_file()
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("EvalResult(images=500, top1=")
    assert 4.0 < float(printed[1]) < 8.0  # 4-bit codes plus their group scales
