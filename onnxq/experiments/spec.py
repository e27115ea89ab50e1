"""Sweep specifications: models, data and tables of quantization configurations, in TOML.

A spec names its models (``[models.NAME]``: an ``onnxq export`` name or an ONNX file), its images
(``[data]``) and one or more ``[[table]]``. A table's ``rows`` use the ``onnxq quantize`` flags as
keys (``wbits``, ``scheme``, ``gs``, ``observer``, ``fbits``, ``f_scheme``, ...) plus any other
``QuantConfig`` field, a ``remark``, and optionally a ``reference`` for the "(±delta)" cells. A row
whose values include lists is a grid: one row per combination. ``extends = "base.toml"`` takes
everything from a base spec except the top-level keys this file sets. docs/sweeps.md has the
whole format.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxq.base.errors import OnnxqError
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme, feature_observer
from onnxq.experiments.tables import REFERENCE_STYLES, SPEC_COLUMNS, SWEEP_HEADER

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: Row keys that build the weight and feature schemes, with the ``onnxq quantize`` defaults but
#: one: ``f_observer`` is ``minmax``, the seed's, where the command line picks ``auto``.
SCHEME_DEFAULTS: dict[str, Any] = {
    "wbits": 8,
    "scheme": "per-channel-symmetric",
    "gs": None,
    "observer": "minmax",
    "fbits": 8,
    "f_scheme": "per-tensor-affine",
    "f_gs": None,
    "f_observer": "minmax",
    "percentile": 99.99,
    "symmetric_range": "restricted",
    "weight_only": False,
}
#: Row keys that only change how the row is shown or compared.
PRESENTATION_KEYS = ("model", "remark", "reference", "series")
#: ``QuantConfig`` fields written as comma-separated lists, as on the command line.
LIST_FIELDS = ("keep_8bit", "ops")
#: TOML has no null: this string turns a setting off (None), or a row's reference.
OFF = "none"
#: A row compared with its float model.
FLOAT_REFERENCE = "fp32"

SPEC_KEYS = ("title", "description", "extends", "models", "data", "defaults", "table")
MODEL_KEYS = ("export", "path", "weights", "random_weights", "seed", "label")
DATA_KEYS = ("calibration", "evaluation", "calibration_size", "evaluation_limit", "seed")
TABLE_KEYS = (
    "title", "model", "columns", "reference", "reference_style", "float_row", "continues",
    "defaults", "rows",
)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A float model: exported by onnxq (``export``) or an existing ONNX file (``path``)."""

    key: str
    label: str  # the table's model column
    export: str | None = None
    path: Path | None = None
    weights: Path | None = None
    random_weights: bool = False
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where the images come from, relative to the sweep's ``--data`` folder.

    Calibration uses a seeded sample of ``calibration_size`` images of the calibration folder
    (default: the largest ``calib_size`` of the spec's rows); when it is also the evaluation
    folder, evaluation uses the other images.
    """

    calibration: str = "."
    evaluation: str = "."
    calibration_size: int | None = None
    evaluation_limit: int | None = None
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Run:
    """One measurement: a model quantized with a config, or the float model (config None)."""

    model: str
    config: QuantConfig | None


@dataclasses.dataclass(frozen=True)
class TableRow:
    run: Run
    remark: str = ""
    reference: Run | None = None
    series: str | None = None  # the plot line it belongs to (default: derived from the config)


@dataclasses.dataclass(frozen=True)
class Table:
    title: str
    rows: tuple[TableRow, ...]
    columns: tuple[str, ...] = SWEEP_HEADER
    reference_style: str = "delta"
    continues: bool = False  # a block of the table before it: no title, no header


@dataclasses.dataclass(frozen=True)
class Spec:
    path: Path
    title: str
    description: str
    models: dict[str, ModelSpec]
    data: DataSpec
    tables: tuple[Table, ...]

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def calibration_size(self) -> int:
        """Images held out for calibration: ``[data]``'s, or the most any row calibrates on."""
        sizes = [run.config.calib_size for run in self.runs() if run.config is not None]
        return self.data.calibration_size or max(sizes, default=1)

    def runs(self) -> list[Run]:
        """Every run the tables need (their references included), each once, in table order."""
        runs: dict[Run, None] = {}
        for table in self.tables:
            for row in table.rows:
                runs[row.run] = None
                if row.reference is not None:
                    runs[row.reference] = None
        return list(runs)


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec; every mistake is an ``OnnxqError`` naming the file and key."""
    path = Path(path)
    document, origins = _read_with_bases(path, set())
    where = path.name
    _check_keys(where, document, SPEC_KEYS)
    models_folder = origins.get("models", path.parent)
    models = _models(where, _table_of(where, document, "models"), models_folder)
    if not models:
        raise OnnxqError(f"{where}: no [models.NAME] section")
    data = _data(where, _table_of(where, document, "data"))
    defaults = _table_of(where, document, "defaults")
    tables_raw = document.get("table", [])
    if not isinstance(tables_raw, list) or not tables_raw:
        raise OnnxqError(f"{where}: no [[table]] entries")
    tables = tuple(
        _table(f"{where}: table {number}", raw, defaults, models)
        for number, raw in enumerate(tables_raw, 1)
    )
    if tables[0].continues:
        raise OnnxqError(f"{where}: table 1: 'continues' needs a table before it")
    return Spec(
        path,
        _text(where, document, "title", path.stem),
        _text(where, document, "description", ""),
        models,
        data,
        tables,
    )


def _read_with_bases(path: Path, seen: set[Path]) -> tuple[dict, dict[str, Path]]:
    """The document with its ``extends`` chain applied, and the folder each top-level key came
    from (relative paths in ``[models]`` are relative to the file that wrote them)."""
    resolved = path.resolve()
    if resolved in seen:
        raise OnnxqError(f"{path}: 'extends' loops back to this file")
    seen.add(resolved)
    if not path.is_file():
        raise OnnxqError(f"{path}: no such spec file")
    try:
        document = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise OnnxqError(f"{path}: not valid TOML ({error})") from None
    origins = {key: path.parent for key in document}
    base = document.pop("extends", None)
    if base is None:
        return document, origins
    if not isinstance(base, str):
        raise OnnxqError(f"{path.name}: 'extends' must be a file name")
    merged, base_origins = _read_with_bases(path.parent / base, seen)
    merged.update(document)
    return merged, {**base_origins, **origins}


def _models(where: str, raw: Mapping, folder: Path) -> dict[str, ModelSpec]:
    models = {}
    for key, entry in raw.items():
        place = f"{where}: [models.{key}]"
        if not isinstance(entry, dict):
            raise OnnxqError(f"{place}: must be a table of settings")
        _check_keys(place, entry, MODEL_KEYS)
        path, export = entry.get("path"), entry.get("export")
        if path is not None and export is not None:
            raise OnnxqError(f"{place}: give either 'path' (an ONNX file) or 'export', not both")
        weights = entry.get("weights")
        models[key] = ModelSpec(
            key=key,
            label=_text(place, entry, "label", key),
            export=None if path is not None else _text(place, entry, "export", key),
            path=_file(place, folder, path) if path is not None else None,
            weights=_file(place, folder, weights) if weights is not None else None,
            random_weights=_typed(place, entry, "random_weights", bool, False),
            seed=_typed(place, entry, "seed", int, 0),
        )
    return models


def _file(place: str, folder: Path, name: object) -> Path:
    if not isinstance(name, str):
        raise OnnxqError(f"{place}: file names must be strings, got {name!r}")
    path = (folder / Path(name).expanduser()).resolve()
    if not path.is_file():
        raise OnnxqError(f"{place}: {path}: no such file")
    return path


def _data(where: str, raw: Mapping) -> DataSpec:
    place = f"{where}: [data]"
    _check_keys(place, raw, DATA_KEYS)
    data = DataSpec(
        calibration=_text(place, raw, "calibration", "."),
        evaluation=_text(place, raw, "evaluation", "."),
        calibration_size=_typed(place, raw, "calibration_size", int, None),
        evaluation_limit=_typed(place, raw, "evaluation_limit", int, None),
        seed=_typed(place, raw, "seed", int, 0),
    )
    for size in (data.calibration_size, data.evaluation_limit):
        if size is not None and size < 1:
            raise OnnxqError(f"{place}: calibration_size and evaluation_limit must be at least 1")
    return data


def _table(where: str, raw: object, defaults: Mapping, models: Mapping[str, ModelSpec]) -> Table:
    if not isinstance(raw, dict):
        raise OnnxqError(f"{where}: must be a table")
    _check_keys(where, raw, TABLE_KEYS)
    columns = tuple(_typed(where, raw, "columns", list, list(SWEEP_HEADER)))
    unknown = [column for column in columns if column not in SPEC_COLUMNS]
    if unknown:
        raise OnnxqError(f"{where}: unknown column {unknown[0]!r} (known: {', '.join(SPEC_COLUMNS)})")
    style = _text(where, raw, "reference_style", "delta")
    if style not in REFERENCE_STYLES:
        raise OnnxqError(f"{where}: reference_style must be one of {', '.join(REFERENCE_STYLES)}")
    continues = _typed(where, raw, "continues", bool, False)
    shared = {**defaults, **_table_of(where, raw, "defaults")}
    if "model" in raw:
        shared["model"] = raw["model"]
    if "reference" in raw:
        shared["reference"] = raw["reference"]
    entries = raw.get("rows")
    if not isinstance(entries, list) or not entries:
        raise OnnxqError(f"{where}: needs a non-empty list 'rows'")
    rows = [
        row
        for number, entry in enumerate(entries, 1)
        for row in _rows(f"{where}, row {number}", entry, shared, models)
    ]
    if _typed(where, raw, "float_row", bool, not continues):
        first_seen = dict.fromkeys(row.run.model for row in rows)
        rows[:0] = [TableRow(Run(model, None), "float baseline") for model in first_seen]
    return Table(
        title=_text(where, raw, "title", ""),
        rows=tuple(rows),
        columns=columns,
        reference_style=style,
        continues=continues,
    )


def _rows(where: str, entry: object, shared: Mapping, models: Mapping) -> list[TableRow]:
    """The rows of one ``rows`` entry: one, or one per combination of its list values."""
    if not isinstance(entry, dict):
        raise OnnxqError(f"{where}: a row must be a table of keys")
    values = {**shared, **entry}
    grid = {key: value for key, value in values.items() if isinstance(value, list)}
    if "reference" in grid:
        raise OnnxqError(f"{where}: 'reference' cannot be a list")
    rows = []
    for combination in itertools.product(*grid.values()):
        settings = {**values, **dict(zip(grid, combination))}
        rows.append(_row(where, settings, models))
    return rows


def _row(where: str, settings: dict, models: Mapping[str, ModelSpec]) -> TableRow:
    model = settings.get("model", next(iter(models)) if len(models) == 1 else None)
    if model is None:
        raise OnnxqError(f"{where}: name its 'model' (the spec has several)")
    if model not in models:
        raise OnnxqError(f"{where}: unknown model {model!r} (the spec has {', '.join(models)})")
    knobs = {key: value for key, value in settings.items() if key not in PRESENTATION_KEYS}
    run = Run(model, build_config(where, knobs))
    reference = settings.get("reference", OFF)
    return TableRow(
        run,
        remark=_text(where, settings, "remark", ""),
        reference=_reference(where, reference, model, knobs),
        series=_typed(where, settings, "series", str, None),
    )


def _reference(where: str, reference: object, model: str, knobs: dict) -> Run | None:
    """``"none"``, ``"fp32"`` (the float model) or the row's own settings with some changed."""
    if reference == OFF:
        return None
    if reference == FLOAT_REFERENCE:
        return Run(model, None)
    if not isinstance(reference, dict):
        raise OnnxqError(
            f"{where}: reference must be \"none\", \"fp32\" or a table of changed settings "
            f"(e.g. {{decompose_scales = false}}), got {reference!r}"
        )
    if any(isinstance(value, list) for value in reference.values()):
        raise OnnxqError(f"{where}: a reference cannot hold lists")
    changes = {key.replace("-", "_"): value for key, value in reference.items() if key != "model"}
    settings = {key.replace("-", "_"): value for key, value in knobs.items()}
    for scheme, size in (("scheme", "gs"), ("f_scheme", "f_gs")):
        if "group" not in str(changes.get(scheme, "group")) and size not in changes:
            settings.pop(size, None)  # a reference that is not per-group has no group size
    settings.update(changes)
    return Run(reference.get("model", model), build_config(f"{where}, reference", settings))


def config_keys() -> list[str]:
    """Every key a row may set: the scheme flags and the other ``QuantConfig`` fields."""
    fields = [f.name for f in dataclasses.fields(QuantConfig)]
    fields = [name for name in fields if name not in ("weights", "features")]
    return list(SCHEME_DEFAULTS) + fields


def build_config(where: str, knobs: Mapping[str, Any]) -> QuantConfig:
    """A ``QuantConfig`` from row keys, unset keys at ``QuantConfig``'s defaults (the CLI's)."""
    knobs = {key.replace("-", "_"): _none(value) for key, value in knobs.items()}
    known = config_keys()
    unknown = [key for key in knobs if key not in known]
    if unknown:
        allowed = ", ".join(known + list(PRESENTATION_KEYS))
        raise OnnxqError(f"{where}: unknown key {unknown[0]!r} (known: {allowed})")
    settings = {**SCHEME_DEFAULTS, **knobs}
    try:
        weights = Scheme.parse(
            _of(where, settings, "scheme", str),
            bits=_of(where, settings, "wbits", int),
            group_size=_of(where, settings, "gs", int),
            observer=_of(where, settings, "observer", str),
            percentile=_of(where, settings, "percentile", float),
            symmetric_range=_of(where, settings, "symmetric_range", str),
        )
        features = None
        if not _of(where, settings, "weight_only", bool):
            feature_bits = _of(where, settings, "fbits", int)
            features = Scheme.parse(
                _of(where, settings, "f_scheme", str),
                bits=feature_bits,
                group_size=_of(where, settings, "f_gs", int),
                observer=feature_observer(_of(where, settings, "f_observer", str), feature_bits),
                percentile=_of(where, settings, "percentile", float),
                symmetric_range=_of(where, settings, "symmetric_range", str),
            )
        fields = {key: value for key, value in knobs.items() if key not in SCHEME_DEFAULTS}
        for key in LIST_FIELDS:
            if fields.get(key) is not None:
                fields[key] = tuple(_comma_list(where, key, fields[key]))
        return QuantConfig(weights=weights, features=features, **fields)
    except OnnxqError as error:
        message = str(error)  # the row's own checks already name the place
        raise OnnxqError(message if message.startswith(where) else f"{where}: {message}") from None
    except (TypeError, ValueError, KeyError) as error:
        raise OnnxqError(f"{where}: invalid settings ({error})") from None


def _none(value: object) -> object:
    return None if value == OFF else value


def _comma_list(where: str, key: str, value: object) -> list[str]:
    if not isinstance(value, str):
        raise OnnxqError(f"{where}: {key} is a comma-separated string such as \"first,last\"")
    return [part.strip() for part in value.split(",") if part.strip()]


def _of(where: str, settings: Mapping, key: str, kind: type) -> Any:
    value = settings[key]
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise OnnxqError(f"{where}: {key} must be {_KIND_NAMES[kind]}, got {value!r}")
    return value


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _typed(where: str, raw: Mapping, key: str, kind: type, default: Any) -> Any:
    return _of(where, {key: raw.get(key, default)}, key, kind)


def _text(where: str, raw: Mapping, key: str, default: str) -> str:
    return _typed(where, raw, key, str, default)


def _table_of(where: str, raw: Mapping, key: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise OnnxqError(f"{where}: '{key}' must be a table")
    return value


def _check_keys(where: str, raw: Mapping, allowed: tuple[str, ...]) -> None:
    unknown = [key for key in raw if key not in allowed]
    if unknown:
        raise OnnxqError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(allowed)})")
