"""The automatic channel passes are kept only when the quantized network gains from them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx_ir as ir
import pytest

from onnxq.base import metadata
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.pipeline import modelio, pass_selection
from onnxq.pipeline import quantize as quantize_module
from onnxq.pipeline.pass_selection import (
    Candidate,
    automatic_passes,
    choose,
    with_passes,
)
from onnxq.pipeline.quantize import quantize
from onnxq.reporting.accounting import account
from onnxq.reporting.report import summary_lines

W4A8 = QuantConfig(
    weights=Scheme.parse("per-group-affine", bits=4, group_size=2),
    features=Scheme.parse("per-tensor-affine", bits=8),
    calib_size=8,
)
BOTH = dataclasses.replace(W4A8, smooth_alpha="auto", reorder="auto")


def _bytes(model: ir.Model) -> bytes:
    return ir.serde.serialize_model(model).SerializeToString()


def candidate(passes: tuple[str, ...], divergences) -> Candidate:
    return Candidate(passes, W4A8, np.asarray(divergences, dtype=np.float64))


def test_a_pass_is_kept_when_it_is_clearly_closer_to_fp32():
    rng = np.random.default_rng(0)
    neither = candidate((), rng.uniform(0.2, 0.4, 100))
    reorder = candidate(("reorder",), neither.divergences - rng.uniform(0.05, 0.1, 100))
    assert pass_selection.clearly_closer(reorder, neither)
    assert choose([reorder, neither]) is reorder


def test_a_gain_within_the_noise_keeps_the_simpler_model():
    rng = np.random.default_rng(0)
    neither = candidate((), rng.uniform(0.2, 0.4, 100))
    noise = rng.normal(0.0, 0.1, 100)
    noisy = candidate(("reorder",), neither.divergences + noise - noise.mean() - 0.005)
    assert noisy.divergence < neither.divergence  # lower on average, by 0.5 standard errors
    assert not pass_selection.clearly_closer(noisy, neither)
    assert choose([noisy, neither]) is neither


def test_a_second_pass_must_also_beat_the_first_alone():
    rng = np.random.default_rng(1)
    neither = candidate((), rng.uniform(0.2, 0.4, 100))
    reorder = candidate(("reorder",), neither.divergences - 0.1)
    wobble = rng.normal(0.0, 0.05, 100)
    both = candidate(("smooth", "reorder"), reorder.divergences + wobble - wobble.mean() - 0.001)
    smooth = candidate(("smooth",), neither.divergences + 0.01)
    assert both.divergence < reorder.divergence
    assert choose([both, smooth, reorder, neither]) is reorder
    kept = [r["kept"] for r in pass_selection.records([both, smooth, reorder, neither])]
    assert kept == [False, False, True, False]


def test_equal_probes_keep_no_pass():
    same = np.full(10, 0.3)
    assert choose([candidate(("reorder",), same), candidate((), same)]).passes == ()


def test_only_automatic_passes_are_probed():
    assert automatic_passes(W4A8) == ()
    assert automatic_passes(BOTH) == ("smooth", "reorder")
    explicit = dataclasses.replace(W4A8, smooth_alpha=0.5, reorder="auto")
    assert automatic_passes(explicit) == ("reorder",)
    assert with_passes(explicit, ()) == dataclasses.replace(explicit, reorder=None)
    assert with_passes(BOTH, ("reorder",)) == dataclasses.replace(BOTH, smooth_alpha=None)


def test_every_combination_is_probed_and_the_best_applied(tiny_path, sample_images):
    model = modelio.load_model(tiny_path)
    result = quantize(model, BOTH, sample_images.head(8))
    labels = [c.label for c in result.pass_selection]
    assert labels == ["smooth + reorder", "smooth", "reorder", "neither"]
    divergences = [c.divergence for c in result.pass_selection]
    assert all(np.isfinite(d) and d >= 0 for d in divergences)
    chosen = choose(result.pass_selection)
    assert result.config == chosen.config
    # The model written is the chosen probe's: the same config without selection gives the
    # same graph and weights (only the selection record differs).
    direct = modelio.load_model(tiny_path)
    quantize(direct, chosen.config, sample_images.head(8), select=False)
    del model.metadata_props[metadata.PASS_SELECTION]
    assert _bytes(direct) == _bytes(model)
    model.metadata_props[metadata.PASS_SELECTION] = json.dumps(
        pass_selection.records(result.pass_selection)
    )
    stored = QuantConfig.from_dict(json.loads(model.metadata_props[metadata.QUANTIZATION]))
    assert stored == chosen.config
    recorded = json.loads(model.metadata_props[metadata.PASS_SELECTION])
    assert [r["divergence"] for r in recorded] == divergences
    assert [r["kept"] for r in recorded] == [c is chosen for c in result.pass_selection]
    report = account(model)
    assert report.pass_selection == recorded
    line = next(x for x in summary_lines(report) if x.startswith("automatic channel passes"))
    assert line.startswith(f"automatic channel passes: kept {chosen.label} (")


def test_a_pass_that_hurts_the_network_is_dropped(tiny_path, sample_images, monkeypatch):
    """A reorder that (wrongly) changes the function must lose to the model without it."""
    rewrite = quantize_module.rewrite_channels

    def harmful_reorder(model: ir.Model, config, *args, **kwargs):
        reports = rewrite(model, config, *args, **kwargs)
        if config.reorder is not None:
            weight = next(v for v in model.graph.initializers.values() if v.name.endswith("weight"))
            weight.const_value = ir.tensor(weight.const_value.numpy() * np.float32(-1.0))
        return reports

    monkeypatch.setattr(quantize_module, "rewrite_channels", harmful_reorder)
    config = dataclasses.replace(W4A8, reorder="auto")
    result = quantize(modelio.load_model(tiny_path), config, sample_images.head(8))
    by_label = {c.label: c.divergence for c in result.pass_selection}
    assert by_label["reorder"] > by_label["neither"]
    assert result.config.reorder is None


def test_probes_do_not_touch_the_model(tiny_path, sample_images):
    model = modelio.load_model(tiny_path)
    before = _bytes(model)
    preprocessing = modelio.get_preprocessing(model)
    images = sample_images.head(4)

    def probe(copy, config):
        return quantize(copy, config, images, preprocessing, 4, "cpu", select=False)

    pass_selection.select_passes(model, BOTH, images, preprocessing, probe, "cpu")
    assert _bytes(model) == before


@pytest.mark.slow
def test_cli_reports_the_selection(tmp_path, tiny_path, sample_dir):
    import subprocess
    import sys

    output = tmp_path / "q.onnx"
    command = [
        sys.executable, "-m", "onnxq", "quantize", str(tiny_path), "-o", str(output), "--calib",
        str(sample_dir), "--calib-size", "8", "--wbits", "4", "--scheme", "per-group-affine",
        "--gs", "2", "--reorder", "auto", "--rounding", "nearest",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "automatic channel passes: kept " in result.stdout
    assert "reorder " in result.stdout and "neither " in result.stdout
    unselected = subprocess.run(
        [*command, "--no-select-passes"], capture_output=True, text=True
    )
    assert unselected.returncode == 0, unselected.stderr
    assert "automatic channel passes" not in unselected.stdout
    assert "reorder: " in unselected.stdout  # the pass ran as configured
