"""``onnxq report``: equivalent-bit accounting from the ONNX graph alone, against hand counts
and against every "Equivalent wbit" figure of the seed log."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from markdown_tables import parse_tables

from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.pipeline import modelio
from onnxq.pipeline.quantize import quantize
from onnxq.reporting import accounting

# Tiny CNN layers: name → (elements, output channels, input channels, kernel elements).
TINY = {
    "conv1": (8 * 3 * 9, 8, 3, 9),
    "conv2": (16 * 8 * 9, 16, 8, 9),
    "dw3": (16 * 1 * 9, 16, 1, 9),
    "pw4": (16 * 16, 16, 16, 1),
}
FC = (10 * 16, 10, 16, 1)


def _quantized(path, scheme: str, bits: int = 4, gs: int | None = None, **options):
    model = modelio.load_model(path)
    config = QuantConfig(weights=Scheme.parse(scheme, bits=bits, group_size=gs), **options)
    quantize(model, config)
    return model


def _groups(layer, gs):
    _, channels, inputs, _ = layer
    return channels * -(-inputs // gs)


def _expected_bits(layers, per_weight, overhead) -> float:
    elements = sum(layer[0] for layer in layers)
    return (per_weight * elements + sum(overhead(layer) for layer in layers)) / elements


def test_plain_per_group_counts_a_float_scale_and_a_zero_point_per_group(tiny_path):
    report = accounting.account(_quantized(tiny_path, "per-group-affine", gs=3))
    layers = {w.layer: w for w in report.weights}
    assert [w.layer for w in report.counted] == list(TINY)
    assert not layers["fc"].counted
    conv2 = layers["conv2"]
    assert (conv2.scheme, conv2.bits, conv2.group_channels, conv2.group_elements) == (
        "per-group-affine", 4, 3, 27,
    )
    costs = (conv2.groups, conv2.scale_bits, conv2.zero_point_bits, conv2.channel_bits)
    assert costs == (48, 32, 4, 0)
    assert conv2.equivalent_bits == pytest.approx(4 + 48 * 36 / 1152)
    assert layers["dw3"].groups == 16  # a group never spans more than the layer's input channels
    expected = _expected_bits(TINY.values(), 4, lambda layer: _groups(layer, 3) * 36)
    assert report.equivalent_bits == pytest.approx(expected)
    assert report.packed_bytes == pytest.approx(expected * report.elements / 8)
    assert report.float_bytes == 4 * report.elements

    with_fc = accounting.account(_quantized(tiny_path, "per-group-affine", gs=3), include_fc=True)
    expected = _expected_bits([*TINY.values(), FC], 4, lambda layer: _groups(layer, 3) * 36)
    assert with_fc.equivalent_bits == pytest.approx(expected)


def test_decomposed_scales_count_codes_per_group_and_floats_per_channel(tiny_path):
    model = _quantized(tiny_path, "per-group-affine", gs=3, decompose_scales=True)
    layers = {w.layer: w for w in accounting.account(model).weights}
    conv2 = layers["conv2"]
    assert conv2.decomposed
    assert (conv2.scale_bits, conv2.zero_point_bits, conv2.channel_bits) == (4, 4, 64)
    assert conv2.overhead_bits == 48 * 8 + 16 * 64
    assert not layers["dw3"].decomposed and not layers["conv1"].decomposed  # one group per channel

    model = _quantized(tiny_path, "per-group-symmetric", gs=3, decompose_scales=True, scale_bits=3)
    conv2 = {w.layer: w for w in accounting.account(model).weights}["conv2"]
    assert (conv2.scale_bits, conv2.zero_point_bits, conv2.channel_bits) == (3, 0, 32)
    assert conv2.equivalent_bits == pytest.approx(4 + (48 * 3 + 16 * 32) / 1152)


def test_per_channel_8bit_kept_layers_and_float_layers(tiny_path):
    report = accounting.account(_quantized(tiny_path, "per-channel-symmetric", bits=8))
    expected = _expected_bits(TINY.values(), 8, lambda layer: layer[1] * 32)
    assert report.equivalent_bits == pytest.approx(expected)
    assert all(w.group_channels is None for w in report.weights)

    model = _quantized(tiny_path, "per-group-affine", gs=4, keep_8bit=("first",))
    conv1 = {w.layer: w for w in accounting.account(model).weights}["conv1"]
    assert (conv1.bits, conv1.zero_point_bits) == (8, 8)  # 8-bit zero points cost 8 bits

    report = accounting.account(_quantized(tiny_path, "per-channel-affine", ops=("Gemm",)))
    assert {w.layer: w.scheme for w in report.counted} == dict.fromkeys(TINY, "float")
    assert report.equivalent_bits == 32


def test_structure_alone_gives_the_same_accounting(tiny_path):
    """Without onnxq's metadata the report infers schemes and bits from the graph."""
    model = _quantized(tiny_path, "per-group-affine", gs=3)
    expected = accounting.account(model)
    model.metadata_props.clear()
    for node in model.graph:
        node.metadata_props.clear()
    inferred = accounting.account(model)
    assert inferred.config is None
    for seen, recorded in zip(inferred.weights, expected.weights, strict=True):
        seen, recorded = seen.to_dict(), recorded.to_dict()
        if recorded["groups"] == recorded["shape"][0]:
            # one group covers the layer's inputs (conv1 has 3): stored per-axis, which is what
            # per-channel means, so only the metadata could tell the scheme's name
            assert (seen["scheme"], seen["group_channels"]) == ("per-channel-affine", None)
            seen.update(scheme=recorded["scheme"], group_channels=recorded["group_channels"])
        assert seen == recorded
    assert inferred.equivalent_bits == expected.equivalent_bits


def test_onnxruntime_quantizer_output(tiny_path, tmp_path):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"input": rng.normal(size=(1, 3, 32, 32)).astype(np.float32)}])

        def get_next(self):
            return next(self.batches, None)

    path = tmp_path / "ort.onnx"
    quantize_static(
        str(tiny_path), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
    )
    report = accounting.account(modelio.load_model(path))
    assert {w.scheme for w in report.counted} == {"per-channel-symmetric"}
    # int8 codes, one fp32 scale per output channel; its all-zero zero point costs nothing
    assert report.equivalent_bits == pytest.approx(
        _expected_bits(TINY.values(), 8, lambda layer: layer[1] * 32)
    )
    assert report.feature_schemes() and all(f.bits == 8 for f in report.features)


def test_features_and_channel_sets(tiny_path, sample_images):
    model = modelio.load_model(tiny_path)
    config = QuantConfig(
        weights=Scheme.parse("per-group-affine", bits=4, group_size=4),
        features=Scheme.parse("per-tensor-affine", bits=8), calib_size=4, reorder="weight-max",
    )
    quantize(model, config, sample_images.head(4))
    report = accounting.account(model)
    assert report.feature_schemes() == {"8-bit per-tensor-affine (minmax)": 5}
    assert report.channel_sets and report.config["reorder"] == "weight-max"
    from onnxq.reporting.report import summary_lines

    assert any(line.startswith("channel sets: ") for line in summary_lines(report))


def onnxq(*args):
    return subprocess.run(
        [sys.executable, "-m", "onnxq", *map(str, args)], capture_output=True, text=True
    )


def test_cli(tiny_path, tmp_path):
    output = tmp_path / "w4.onnx"
    result = onnxq(
        "quantize", tiny_path, "-o", output, "--weight-only", "--wbits", "4",
        "--scheme", "per-group-affine", "--gs", "3", "--decompose-scales",
    )
    assert result.returncode == 0, result.stderr
    onnx.checker.check_model(onnx.load(str(output)), full_check=True)

    record = json.loads(onnxq("report", output, "--json").stdout)
    expected = accounting.account(modelio.load_model(output))
    assert record["totals"]["equivalent_bits"] == pytest.approx(expected.equivalent_bits)
    assert [layer["layer"] for layer in record["layers"]] == [*TINY, "fc"]
    assert record["config"]["decompose_scales"] is True

    markdown = onnxq("report", output, "--markdown").stdout
    table = parse_tables(markdown)[0]
    assert table.header[-1] == "equiv bits" and len(table.rows) == 5
    assert f"{expected.equivalent_bits:.2f} equivalent bits per weight" in markdown

    table = onnxq("report", output).stdout
    assert "conv2" in table and "not counted: fc" in table

    for args, fragment in [
        ([output, "--json", "--markdown"], "choose one of"),
        ([tmp_path / "missing.onnx"], "no such file"),
    ]:
        result = onnxq("report", *args)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith("onnxq: error: ") and fragment in result.stderr

    refused = onnxq(
        "quantize", tiny_path, "-o", tmp_path / "pc.onnx", "--weight-only", "--wbits", "4",
        "--scheme", "per-channel-affine", "--decompose-scales",
    )
    assert refused.returncode == 2 and "needs a per-group weight scheme" in refused.stderr
    assert not (tmp_path / "pc.onnx").exists()


# ---- the seed log -------------------------------------------------------------------------

def _seed_figures(text: str, model: str) -> list[tuple[str, str, float, float | None]]:
    """``(scheme, group size, equivalent bits, plain bits)`` of every 4-bit row of ``model`` with
    an "Equivalent wbit" figure: ``4.06``, ``4.06(4.14)`` or ``4.06(-0.08)`` (change from plain)."""
    figures = []
    for table in parse_tables(text):
        if "Equivalent wbit" not in table.header:
            continue
        column = table.header.index("Equivalent wbit")
        for row in table.rows:
            if row[0] != model or row[1] != "4" or not row[column]:
                continue
            match = re.fullmatch(r"([\d.]+)(?:\(([-+]?)([\d.]+)\))?", row[column])
            bits, sign, other = float(match[1]), match[2], match[3]
            plain = None if other is None else bits - float(sign + other) if sign else float(other)
            figures.append((row[3], row[4], bits, plain))
    return figures


@pytest.fixture(scope="module", params=["resnet18", "resnet50"])
def random_resnet(request, tmp_path_factory):
    """``(name, path)`` of a ResNet exported with random weights: only its shapes matter here."""
    from onnxq.models.export import export_model

    path = tmp_path_factory.mktemp("resnet") / f"{request.param}.onnx"
    export_model(request.param, path, random_weights=True)
    return request.param, path


@pytest.mark.slow
def test_report_reproduces_the_seed_equivalent_bits(random_resnet, seed_results):
    """Weight-only quantization suffices: the figures depend on layer shapes and schemes."""
    model_name, path = random_resnet
    reported = {}
    for gs in (None, 32, 16, 8, 4, 1):
        for decomposed in (False, True) if gs else (False,):
            scheme = "per-group-affine" if gs else "per-channel-affine"
            model = _quantized(path, scheme, gs=gs, decompose_scales=decomposed)
            reported[scheme, str(gs or "/"), decomposed] = accounting.account(model).equivalent_bits
    figures = _seed_figures(seed_results, model_name)
    assert len(figures) >= 11
    matched = set()
    for scheme, gs, bits, plain_bits in figures:
        plain, decomposed = reported[scheme, gs, False], reported.get((scheme, gs, True))
        if plain_bits is not None:  # a decomposed figure, and the plain one it improves on
            assert abs(decomposed - bits) <= 0.01 and abs(plain - plain_bits) <= 0.011
            matched.update({(scheme, gs, False), (scheme, gs, True)})
        elif abs(plain - bits) <= 0.01:
            matched.add((scheme, gs, False))
        else:
            assert decomposed is not None and abs(decomposed - bits) <= 0.01, (scheme, gs, bits)
            matched.add((scheme, gs, True))
    assert matched == set(reported)  # every configuration has a figure in the log
