"""Content-addressed caches: exported float models and calibrated feature parameters.

Keys are SHA-256 digests of everything a result depends on, so a cache entry is valid wherever it
is found (another process, another run, another node sharing the folder) and never goes stale:
a change upstream changes the key. Files are written atomically, so processes running side by
side can share a cache folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxq import __version__
from onnxq.analysis.plan import FeatureTarget
from onnxq.base import outputs
from onnxq.core.feature_quantization import FeatureParams
from onnxq.core.schemes import Scheme
from onnxq.io.data import ImageSet
from onnxq.io.preprocessing import Preprocessing

#: Bumped when the calibration file layout or its meaning changes.
CALIBRATION_FORMAT = 1


def digest(value: object) -> str:
    """SHA-256 of ``value`` written as canonical JSON."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    sha = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def model_digest(model: ir.Model) -> str:
    """SHA-256 of a model's serialized bytes (graph, weights and metadata)."""
    proto = ir.serde.serialize_model(model)
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def write_atomically(path: Path, write) -> None:
    """``outputs.write_bytes`` into a folder created if missing (caches, sweep outputs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    outputs.write_bytes(path, write)


class CalibrationCache:
    """Feature parameters on disk, one ``.npz`` per calibration.

    The key covers the float model as calibration sees it (after the function-preserving
    rewrites of ``quantize``), the observed tensors with their schemes and readers, the images,
    the preprocessing, the batch size and the onnxq version: a grid over weight settings
    calibrates once.
    ``hits`` and ``misses`` count this object's lookups.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0

    def key(
        self,
        model: ir.Model,
        targets: Sequence[FeatureTarget],
        images: ImageSet,
        preprocessing: Preprocessing,
        batch_size: int,
    ) -> str:
        return digest(
            {
                "format": CALIBRATION_FORMAT,
                "onnxq": __version__,
                "model": model_digest(model),
                "targets": [[t.tensor, list(t.consumers), t.scheme.to_dict()] for t in targets],
                "images": [str(path) for path in images.files],
                "preprocessing": preprocessing.to_json(),
                "batch_size": batch_size,
            }
        )

    def get(self, key: str) -> dict[str, FeatureParams] | None:
        path = self._path(key)
        if not path.exists():
            self.misses += 1
            return None
        self.hits += 1
        return _read_params(path)

    def put(self, key: str, params: Mapping[str, FeatureParams]) -> None:
        write_atomically(self._path(key), lambda file: _write_params(file, params))

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"


def _write_params(file, params: Mapping[str, FeatureParams]) -> None:
    index = [{"tensor": name, "scheme": p.scheme.to_dict()} for name, p in params.items()]
    arrays = {"index": np.asarray(json.dumps(index))}
    for number, p in enumerate(params.values()):
        arrays[f"{number}.scale"] = p.scale
        arrays[f"{number}.zero_point"] = p.zero_point
    np.savez(file, **arrays)


def _read_params(path: Path) -> dict[str, FeatureParams]:
    with np.load(path, allow_pickle=False) as arrays:
        index = json.loads(str(arrays["index"]))
        return {
            entry["tensor"]: FeatureParams(
                arrays[f"{number}.scale"],
                arrays[f"{number}.zero_point"],
                Scheme.from_dict(entry["scheme"]),
            )
            for number, entry in enumerate(index)
        }
