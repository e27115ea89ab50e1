"""``onnxq sweep`` end to end: two models, a grid, references, resuming, --jobs and Ray."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from markdown_tables import parse_tables
from onnxq.models.export import exported_model
from tiny_models import tiny_cnn

from onnxq.base.errors import OnnxqError
from onnxq.calibration.cache import CalibrationCache
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.experiments.plots import Point, plot_accuracy_vs_bits
from onnxq.experiments.sweep import ResultsFile, SweepOptions, run_sweep, series_label
from onnxq.experiments.tables import format_accuracy
from onnxq.io import data

SPEC = """
title = "Test sweep"

[models.tiny]
path = "{tiny}"
label = "tiny_cnn"

[models.effnet]
path = "{effnet}"
label = "efficientnet_lite0"

[data]
evaluation_limit = 24

[defaults]
calib_size = 8
rounding = "nearest"  # as the seed specs: weight rows share one calibration
placement = "inputs"

[[table]]
title = "Feature groups"
columns = ["model", "w_bit", "f bit", "f Qscheme", "groupsize", "top1 acc", "top5 acc", "remark"]
model = "tiny"
rows = [
  {{ wbits = 8 }},
  {{ wbits = 4, fbits = 4, f_scheme = "per-group-affine", f_gs = [4, 2], remark = "grid" }},
]

[[table]]
title = "Weight groups"
columns = ["model", "w_bit", "f bit", "w Qscheme", "groupsize", "top1 acc", "top5 acc", "Equivalent wbit"]
defaults = {{ model = ["tiny", "effnet"], wbits = 4, scheme = "per-group-affine" }}
reference = {{ scheme = "per-channel-affine" }}
rows = [{{ gs = [8, 4] }}]

[[table]]
continues = true
columns = ["model", "w_bit", "f bit", "w Qscheme", "groupsize", "top1 acc", "top5 acc", "Equivalent wbit"]
reference = "fp32"
reference_style = "value"
rows = [{{ model = "effnet", wbits = 8 }}]
"""
RUNS = 12  # 2 float, 6 on tiny (one a reference), 4 on effnet (one a reference)
ACCURACY = re.compile(r"^\d+\.\d{3}(\([+-]?\d+\.\d{3}\))?$")


def onnxq(*args):
    return subprocess.run(
        [sys.executable, "-m", "onnxq", *map(str, args)], capture_output=True, text=True
    )


def read_records(out: Path) -> dict[str, dict]:
    return ResultsFile(out / "results.jsonl").load()


@pytest.fixture(scope="module")
def tiny_imagenet_path(tmp_path_factory) -> Path:
    """The tiny CNN with 1000 classes, so that ImageNet labels apply."""
    path = tmp_path_factory.mktemp("tiny1000") / "tiny1000.onnx"
    onnx.save(tiny_cnn(classes=1000), str(path))
    return path


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory, tiny_imagenet_path, effnet_path) -> Path:
    path = tmp_path_factory.mktemp("spec") / "small.toml"
    path.write_text(SPEC.format(tiny=tiny_imagenet_path, effnet=effnet_path))
    return path


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, spec_path, sample_dir) -> Path:
    """The spec swept once with two local processes; returns the output folder."""
    out = tmp_path_factory.mktemp("local") / "results"
    result = onnxq("-q", "sweep", spec_path, "--data", sample_dir, "--out", out, "--jobs", 2)
    assert result.returncode == 0, result.stderr
    assert f"{RUNS} runs: 0 done before, {RUNS} ran, 0 failed" in result.stdout
    return out


@pytest.mark.slow
def test_sweep_writes_seed_tables_and_records(local_run, seed_results):
    records = read_records(local_run)
    assert len(records) == RUNS
    for record in records.values():
        assert record["images"] == 24 and record["provider"] == "CPUExecutionProvider"
        assert set(record["versions"]) == {"onnxq", "onnx", "onnxruntime", "numpy", "python"}
        assert record["seconds"]["total"] >= record["seconds"]["quantize"] >= 0
        if record["config"] is None:
            assert record["equivalent_wbit"] == 32 and record["calibration"] is None
        else:
            assert record["calibration_images"] == 8
            QuantConfig.from_dict(record["config"])  # the full config round-trips
    # runs that differ only in their weights share one calibration
    calibrations: dict[tuple, list[str]] = {}
    for record in records.values():
        if record["config"]:
            key = (record["model"], json.dumps(record["config"]["features"]))
            calibrations.setdefault(key, []).append(record["calibration"])
    assert sorted(len(v) for v in calibrations.values()) == [1, 1, 4, 4]
    assert all(v.count("computed") == 1 and v.count("cached") == len(v) - 1 for v in calibrations.values())

    markdown = (local_run / "small.md").read_text()
    assert markdown.startswith("# Test sweep\n")
    seed_headers = [table.header for table in parse_tables(seed_results)]
    tables = parse_tables(markdown)
    assert len(tables) == 2 and all(table.header in seed_headers for table in tables)
    features, weights = tables
    assert [row[:5] for row in features.rows] == [
        ["tiny_cnn", "float32", "float32", "/", "/"],
        ["tiny_cnn", "8", "8", "per-tensor-affine", "/"],
        ["tiny_cnn", "4", "4", "per-group-affine", "4"],
        ["tiny_cnn", "4", "4", "per-group-affine", "2"],
    ]
    assert [row[0] + " " + row[4] for row in weights.rows] == [
        "tiny_cnn /", "efficientnet_lite0 /", "tiny_cnn 8", "tiny_cnn 4",
        "efficientnet_lite0 8", "efficientnet_lite0 4", "efficientnet_lite0 /",
    ]
    for row in features.rows + weights.rows:
        assert ACCURACY.match(row[5]) and ACCURACY.match(row[6])

    def top1(model: str, bits: int, scheme: str, gs: int | None) -> float:
        return next(
            r["top1"] for r in records.values()
            if r["model"] == model and r["config"] and r["config"]["weights"]
            == {"bits": bits, "scheme": scheme, "group_size": gs, "observer": "minmax",
                **({"symmetric_range": "restricted"} if "symmetric" in scheme else {})}
            and r["config"]["features"]["bits"] == 8
        )

    effnet_float = next(r for r in records.values() if r["model"] == "efficientnet_lite0" and not r["config"])
    gs4 = top1("efficientnet_lite0", 4, "per-group-affine", 4)
    per_channel = top1("efficientnet_lite0", 4, "per-channel-affine", None)
    eight_bit = top1("efficientnet_lite0", 8, "per-channel-symmetric", None)
    assert weights.rows[5][5] == format_accuracy(gs4, per_channel, "delta")
    assert weights.rows[6][5] == format_accuracy(eight_bit, effnet_float["top1"], "value")
    assert effnet_float["top1"] > 70 and eight_bit > 70  # real weights, real images

    bits = [float(row[7].split("(")[0]) for row in weights.rows]
    assert bits[:2] == [32, 32] and bits[2] < bits[3] and bits[4] < bits[5]
    assert weights.rows[5][7].endswith(")") and "(" not in weights.rows[6][7]
    assert sorted(path.name for path in local_run.glob("*.png")) == ["small-1.png", "small-2.png"]
    assert "![top-1 against equivalent weight bits](small-2.png)" in markdown


@pytest.mark.slow
def test_rerun_does_no_new_work(local_run, spec_path, sample_dir):
    before = {path: path.stat().st_mtime_ns for path in local_run.rglob("*") if path.is_file()}
    results = (local_run / "results.jsonl").read_bytes()
    markdown = (local_run / "small.md").read_bytes()
    result = onnxq("-q", "sweep", spec_path, "--data", sample_dir, "--out", local_run)
    assert result.returncode == 0, result.stderr
    assert f"{RUNS} runs: {RUNS} done before, 0 ran, 0 failed" in result.stdout
    assert (local_run / "results.jsonl").read_bytes() == results
    assert (local_run / "small.md").read_bytes() == markdown
    cached = {path: stamp for path, stamp in before.items() if "cache" in path.parts}
    assert cached and all(path.stat().st_mtime_ns == stamp for path, stamp in cached.items())
    after = {path for path in local_run.rglob("*") if path.is_file()}
    assert after == set(before)


@pytest.mark.slow
def test_ray_gives_the_same_results(local_run, spec_path, sample_dir, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        summary = run_sweep(
            [spec_path], SweepOptions(sample_dir, tmp_path / "ray", ray="default", threads=1)
        )
    finally:
        ray.shutdown()
    assert (summary.runs, summary.ran, summary.failures) == (RUNS, RUNS, [])
    local, remote = read_records(local_run), read_records(tmp_path / "ray")
    assert local.keys() == remote.keys()
    for run_id, record in local.items():
        for field in ("config", "top1", "top5", "equivalent_wbit", "predictions_sha256", "model"):
            assert remote[run_id][field] == record[field], field
    assert (tmp_path / "ray" / "small.md").read_text() == (local_run / "small.md").read_text()


def test_sweep_user_errors(tmp_path, tiny_imagenet_path, sample_dir):
    spec_path = tmp_path / "small.toml"
    spec_path.write_text(SPEC.format(tiny=tiny_imagenet_path, effnet=tiny_imagenet_path))
    bad = tmp_path / "bad.toml"
    bad.write_text(spec_path.read_text().replace("f_gs = [4, 2]", "f_groups = [4, 2]"))
    out = tmp_path / "out"
    result = onnxq("sweep", bad, "--data", sample_dir, "--out", out)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxq: error: bad.toml: table 1, row 2")
    assert "unknown key 'f_groups'" in lines[0]
    for specs, data_dir, options, fragment in [
        ([spec_path], tmp_path / "nowhere", {}, "no such folder"),
        ([spec_path, spec_path], sample_dir, {}, "two specs are named 'small'"),
        ([spec_path], sample_dir, {"jobs": 2, "ray": "default"}, "not both"),
        ([spec_path], sample_dir, {"jobs": 0}, "--jobs must be at least 1"),
        ([spec_path], sample_dir, {"runtime": "tensorrt"}, "unknown --runtime 'tensorrt'"),
    ]:
        with pytest.raises(OnnxqError, match=fragment):
            run_sweep(specs, SweepOptions(data_dir, out, **options))
    assert not out.exists()


def test_calibration_cache_round_trip(tmp_path, tiny_path, sample_images):
    from onnxq.pipeline import modelio
    from onnxq.pipeline.quantize import quantize

    config = QuantConfig(
        weights=Scheme.parse("per-group-affine", bits=4, group_size=4),
        features=Scheme.parse("per-channel-affine", bits=6, observer="mse"),
        calib_size=4,
    )
    cache = CalibrationCache(tmp_path / "calibration")
    first = quantize(modelio.load_model(tiny_path), config, sample_images, calibration_cache=cache)
    assert (cache.hits, cache.misses) == (0, 1)
    other_weights = QuantConfig(weights=Scheme.parse("per-channel-affine", bits=4),
                                features=config.features, calib_size=4)
    second = quantize(modelio.load_model(tiny_path), other_weights, sample_images, calibration_cache=cache)
    assert (cache.hits, cache.misses) == (1, 1)
    assert second.features.keys() == first.features.keys()
    for name, params in first.features.items():
        assert (second.features[name].scale == params.scale).all()
        assert (second.features[name].zero_point == params.zero_point).all()
        assert second.features[name].scheme == params.scheme
    other_images = data.ImageSet(sample_images.files[4:], sample_images.labels[4:])
    quantize(modelio.load_model(tiny_path), config, other_images, calibration_cache=cache)
    assert (cache.hits, cache.misses) == (1, 2)
    assert len(list((tmp_path / "calibration").glob("*.npz"))) == 2


def test_exports_are_cached_by_settings(tmp_path, monkeypatch):
    import onnxq.models.export

    exports = []

    def fake_export(name, path, weights, random_weights, seed):
        exports.append((name, seed))
        onnx.save(tiny_cnn(), str(path))

    monkeypatch.setattr(onnxq.models.export, "export_model", fake_export)
    first = exported_model(tmp_path, "resnet18", random_weights=True, seed=0)
    assert exported_model(tmp_path, "resnet18", random_weights=True, seed=0) == first
    other = exported_model(tmp_path, "resnet18", random_weights=True, seed=1)
    assert other != first and exports == [("resnet18", 0), ("resnet18", 1)]


def test_results_file_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"id": "a", "top1": 1.0}\n{"id": "b", "to')
    results = ResultsFile(path)
    assert list(results.load()) == ["a"]
    results.append({"id": "c"})
    assert list(results.load()) == ["a", "c"]
    path.write_text('{"id": "a"}\nnot json\n')
    with pytest.raises(OnnxqError, match="results.jsonl:2"):
        results.load()


def test_plot_draws_one_line_per_series(tmp_path):
    from matplotlib.image import imread

    points = [
        Point("W4A8 affine", 4.06, 65.3, "gs32"), Point("W4A8 affine", 4.15, 67.9, "gs8"),
        Point("W4A8 affine, reorder=max", 4.15, 68.6, "gs8"),
    ]
    path = tmp_path / "plot.png"
    plot_accuracy_vs_bits(points, {"resnet18": 69.76}, "W4A8", path)
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
    first = path.read_bytes()
    plot_accuracy_vs_bits(points, {"resnet18": 69.76}, "W4A8", path)
    assert path.read_bytes() == first  # deterministic


def test_series_label_leaves_out_the_weight_granularity():
    def config(scheme, gs=None, **fields):
        return QuantConfig(
            weights=Scheme.parse(scheme, bits=4, group_size=gs, observer="mse"),
            features=Scheme.parse("per-tensor-affine", bits=8), **fields,
        )

    assert series_label(config("per-group-affine", 8, rounding="nearest")) == "W4A8 affine, w mse"
    assert series_label(config("per-channel-affine", rounding="nearest")) == "W4A8 affine, w mse"
    assert series_label(config("per-group-affine", 8, keep_8bit=("last",), rounding="nearest")) == (
        "W4A8 affine, w mse, keep_8bit=last"
    )
    # the label names what the run applies: a 4-bit row's defaults resolve to GPTQ
    assert series_label(config("per-channel-affine")) == (
        "W4A8 affine, w mse, rounding=gptq, bias_correction=True"
    )


def test_ray_flag_takes_an_optional_address():
    from onnxq.cli import _ray_without_address

    assert _ray_without_address(["sweep", "a.toml", "--ray"]) == [
        "sweep", "a.toml", "--ray", "default",
    ]
    assert _ray_without_address(["sweep", "--ray", "-o", "out", "a.toml"]) == [
        "sweep", "--ray", "default", "-o", "out", "a.toml",
    ]
    assert _ray_without_address(["sweep", "a.toml", "--ray", "head:6379"]) == [
        "sweep", "a.toml", "--ray", "head:6379",
    ]


def test_sweep_evaluates_on_openvino_under_their_own_run_ids(tmp_path, tiny_imagenet_path, sample_dir):
    pytest.importorskip("openvino")
    spec = tmp_path / "one.toml"
    spec.write_text(
        f'title = "One row"\n[models.tiny]\npath = "{tiny_imagenet_path}"\n'
        '[data]\nevaluation_limit = 8\n[defaults]\ncalib_size = 8\n'
        '[[table]]\ncolumns = ["model", "w_bit", "top1 acc"]\nmodel = "tiny"\n'
        'rows = [{ wbits = 8 }]\n'
    )
    out = tmp_path / "out"
    records = {}
    for runtime in ("onnxruntime", "openvino"):
        summary = run_sweep([spec], SweepOptions(sample_dir, out, runtime=runtime))
        assert (summary.runs, summary.ran, summary.failures) == (2, 2, [])  # float + W8A8
        records[runtime] = {record["id"]: record for record in read_records(out).values()
                            if record["provider"].startswith("OpenVINO") == (runtime == "openvino")}
    assert len(records["onnxruntime"]) == len(records["openvino"]) == 2
    assert not records["onnxruntime"].keys() & records["openvino"].keys()
