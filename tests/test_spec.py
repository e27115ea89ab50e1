"""Sweep specs: rows, grids, references, strict validation, and the shipped seed specs."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from markdown_tables import parse_tables

from onnxq.base.errors import OnnxqError
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Granularity
from onnxq.experiments.spec import Run, build_config, config_keys, load_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


def write_spec(folder: Path, text: str, name: str = "spec.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture()
def spec_with(tmp_path, tiny_path):
    """A spec file with one model ``tiny`` and the given tables."""

    def make(tables: str, extra: str = "") -> Path:
        head = f'[models.tiny]\npath = "{tiny_path}"\nlabel = "tiny_cnn"\n{extra}\n'
        return write_spec(tmp_path, head + tables)

    return make


def test_rows_grids_and_defaults(spec_with):
    spec = load_spec(spec_with(
        """
        [defaults]
        observer = "mse"
        [[table]]
        title = "groups"
        defaults = { wbits = 4 }
        rows = [
          { wbits = 8, remark = "eight" },
          { scheme = "per-group-affine", gs = [32, 8], fbits = [8, 4], remark = "grid" },
        ]
        """
    ))
    table = spec.tables[0]
    assert [row.remark for row in table.rows] == ["float baseline", "eight"] + ["grid"] * 4
    assert table.rows[0].run == Run("tiny", None)
    configs = [row.run.config for row in table.rows[1:]]
    assert [c.weights.bits for c in configs] == [8, 4, 4, 4, 4]
    assert [(c.weights.group_size, c.features.bits) for c in configs[1:]] == [
        (32, 8), (32, 4), (8, 8), (8, 4),
    ]
    assert all(c.weights.observer.value == "mse" for c in configs)
    assert configs[0].weights.name == "per-channel-symmetric"  # onnxq quantize's default
    assert spec.models["tiny"].label == "tiny_cnn"
    assert spec.calibration_size == 128


def test_feature_observer_auto_and_the_seeds_default(spec_with):
    """Rows take ``f_observer = "auto"`` as the command line does (mse under 8 bits); without
    it a row keeps the seed's min/max, so the seed's tables reproduce."""
    spec = load_spec(spec_with(
        """
        [[table]]
        rows = [{ fbits = [4, 8], f_observer = "auto" }, { fbits = 4 }]
        """
    ))
    configs = [row.run.config for row in spec.tables[0].rows[1:]]
    assert [(c.features.bits, c.features.observer.value) for c in configs] == [
        (4, "mse"), (8, "minmax"), (4, "minmax"),
    ]


def test_references(spec_with):
    spec = load_spec(spec_with(
        """
        [[table]]
        reference = { scheme = "per-channel-affine" }
        reference_style = "value"
        rows = [
          { wbits = 4, scheme = "per-group-affine", gs = 8 },
          { wbits = 4, reference = "fp32" },
          { wbits = 4, reference = "none" },
          { wbits = 4, f-scheme = "per-group-affine", f-gs = 4, reference = { f_scheme = "per-channel-affine" } },
        ]
        """
    ))
    rows = spec.tables[0].rows[1:]
    assert spec.tables[0].reference_style == "value"
    first = rows[0].reference.config
    assert first.weights.granularity is Granularity.CHANNEL and first.weights.group_size is None
    assert first.weights.bits == 4
    assert rows[1].reference == Run("tiny", None)
    assert rows[2].reference is None
    assert rows[3].reference.config.features.name == "per-channel-affine"
    assert rows[3].reference.config.features.group_size is None
    runs = spec.runs()
    assert len(runs) == len(set(runs)) == 6  # float, 3 distinct rows, 2 distinct references


def test_every_quant_config_field_is_a_row_key():
    """New ``QuantConfig`` fields become spec keys without changes to the sweep code."""
    fields = [f for f in dataclasses.fields(QuantConfig) if f.name not in ("weights", "features")]
    assert {f.name for f in fields} <= set(config_keys())
    default = QuantConfig.from_dict({"weights": {"bits": 8, "scheme": "per-channel-symmetric"}})
    for field in fields:
        value = getattr(default, field.name)
        value = ",".join(value) if isinstance(value, tuple) else value
        if value is None:
            continue
        config = build_config("row", {field.name: value})
        assert getattr(config, field.name) == getattr(default, field.name)
    assert build_config("row", {"calib_size": 16, "keep_8bit": "first,last"}).keep_8bit == (
        "first", "last",
    )


@pytest.mark.parametrize(
    "tables, extra, message",
    [
        ("[[table]]\nrows = [{ gsize = 8 }]", "", "table 1, row 1: unknown key 'gsize'"),
        ("[[table]]\nrows = [{ wbits = 4, scheme = 'per-group-affine' }]", "", "needs a group size"),
        ("[[table]]\nrows = [{ wbits = 'four' }]", "", "wbits must be an integer"),
        ("[[table]]\nrows = [{ model = 'resnet' }]", "", "unknown model 'resnet'"),
        ("[[table]]\nrows = [{ reference = 'baseline' }]", "", "reference must be"),
        ("[[table]]\nrows = [{ reference = ['fp32'] }]", "", "'reference' cannot be a list"),
        ("[[table]]\ncolumns = ['model', 'top-1']\nrows = [{}]", "", "unknown column 'top-1'"),
        ("[[table]]\nreference_style = 'ratio'\nrows = [{}]", "", "reference_style must be"),
        ("[[table]]\nrows = []", "", "needs a non-empty list 'rows'"),
        ("[[table]]\ntitel = 'x'\nrows = [{}]", "", "table 1: unknown key 'titel'"),
        ("[[table]]\ncontinues = true\nrows = [{}]", "", "'continues' needs a table before it"),
        ("[[table]]\nrows = [{}]", "[data]\ncalibration_images = 8", "[data]: unknown key"),
        ("[[table]]\nrows = [{}]", 'weights = "missing.pth"', "no such file"),
        ("[[table]]\nrows = [{}]", 'export = "resnet18"', "either 'path'"),
        ("", "", "no [[table]] entries"),
        ("[[table]]\nrows = [{ keep_8bit = 8 }]", "", "comma-separated"),
        ("[[table]]\nrows = [{ f_observer = 'median' }]", "", "unknown feature observer 'median'"),
        ("[[table]]\nrows = [{}\n", "", "not valid TOML"),
    ],
)
def test_mistakes_name_the_key(spec_with, tables, extra, message):
    with pytest.raises(OnnxqError, match="spec.toml") as error:
        load_spec(spec_with(tables, extra))
    assert message in str(error.value)


def test_extends_replaces_top_level_keys(tmp_path, tiny_path):
    base = write_spec(
        tmp_path,
        f'title = "base"\n[models.tiny]\npath = "{tiny_path}"\n[[table]]\nrows = [{{ wbits = 4 }}]',
        "base.toml",
    )
    child = write_spec(tmp_path, f'extends = "{base.name}"\ntitle = "child"\n', "child.toml")
    spec = load_spec(child)
    assert spec.title == "child" and spec.name == "child"
    assert spec.tables == load_spec(base).tables
    loop = write_spec(tmp_path, 'extends = "loop.toml"\n', "loop.toml")
    with pytest.raises(OnnxqError, match="loops back"):
        load_spec(loop)
    with pytest.raises(OnnxqError, match="no such spec file"):
        load_spec(tmp_path / "absent.toml")


def _seed_specs() -> list[Path]:
    return sorted((SWEEPS / "seed").glob("table*.toml"))


def test_a_seed_spec_per_seed_table_with_its_columns(seed_results):
    """sweeps/seed/tableNN.toml renders seed table NN with the seed's header."""
    seed_headers = [table.header for table in parse_tables(seed_results)]
    spec_headers = []
    for path in _seed_specs():
        for table in tomllib.loads(path.read_text())["table"]:
            if not table.get("continues", False):
                spec_headers.append(table["columns"])
    assert [path.stem for path in _seed_specs()] == [f"table{n:02d}" for n in range(1, 26)]
    assert spec_headers == seed_headers


@pytest.mark.parametrize("name", [path.name for path in _seed_specs()])
def test_quick_variant_runs_the_seed_rows_on_efficientnet(name):
    full, quick = load_spec(SWEEPS / "seed" / name), load_spec(SWEEPS / "quick" / name)
    assert full.data.calibration == "train" and full.data.evaluation == "val"
    assert quick.data.calibration == quick.data.evaluation == "."
    assert {model.export for model in quick.models.values()} == {"efficientnet_lite0"}
    assert {model.label for model in quick.models.values()} == {"efficientnet_lite0"}
    full_configs = {run.config for run in full.runs()}
    assert {run.config for run in quick.runs()} <= full_configs
    if name != "table15.toml":  # its quick variant folds ResNet18 and ResNet50 into one block
        assert quick.tables == full.tables
