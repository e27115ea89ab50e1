"""Export a torch classifier to ONNX the way onnxq expects it.

Opset 21, dynamic batch, BatchNorm folded into Conv, readable names, no exporter debug metadata,
and the preprocessing recorded in ``metadata_props``. The export is checked against torch on a
random input before anything is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import io
import os
import warnings
from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnxq.models import efficientnet_lite, torchvision_zoo
from onnxq.passes.fold_batchnorm import FoldBatchNormPass
from onnxq.passes.name_after_weights import NameAfterWeightsPass

from onnxq import __version__
from onnxq.base import metadata, progress
from onnxq.base.errors import OnnxqError
from onnxq.calibration.cache import digest, file_digest
from onnxq.io import runtime
from onnxq.io.preprocessing import Preprocessing
from onnxq.pipeline import modelio

INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclasses.dataclass(frozen=True)
class ExportResult:
    path: Path
    model: str
    weights: str
    preprocessing: Preprocessing
    max_abs_difference: float  # ONNX Runtime vs torch on a random input


def model_names() -> list[str]:
    """Every model name ``onnxq export`` accepts."""
    return sorted(efficientnet_lite.NAMES) + _torchvision_names()


def _torchvision_names() -> list[str]:
    try:
        return torchvision_zoo.available()
    except ImportError:
        return []


def export_model(
    name: str,
    destination: str | Path,
    weights: str | None = None,
    random_weights: bool = False,
    seed: int = 0,
) -> ExportResult:
    """Build ``name`` (torchvision classifier or ``efficientnet_lite*``) and export it."""
    torch = _import_torch()
    destination = Path(destination)
    stages = iter(("build", "trace", "optimize", "verify", "save"))
    bar = progress.track(stages, f"exporting {name}", total=5)
    next(bar)
    torch.manual_seed(seed)
    if name in efficientnet_lite.NAMES:
        module, preprocessing, source = efficientnet_lite.build(name, weights, random_weights)
    else:
        module, preprocessing, source = torchvision_zoo.build(name, weights, random_weights)
    module.eval()
    next(bar)
    model = _trace(torch, module, preprocessing.crop)
    next(bar)
    _clean(model)
    modelio.set_preprocessing(model, preprocessing)
    model.metadata_props[metadata.SOURCE] = f"{name} ({source})"
    next(bar)
    difference = _compare_with_torch(torch, module, model, preprocessing.crop, seed)
    next(bar)
    modelio.save_model(model, destination)
    for _ in bar:
        pass
    return ExportResult(destination, name, source, preprocessing, difference)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise OnnxqError("exporting needs torch: pip install 'onnxq[export]'") from None
    return torch


def _trace(torch, module, size: int) -> ir.Model:
    """The ONNX program of ``module`` with a dynamic batch named ``batch``.

    The example has two images and the batch is ``Dim.DYNAMIC``: with one image, or a fixed
    range, torch specialises some models (ConvNeXt, Swin, ViT) to a batch of 1 or fails.
    """
    example = (torch.randn(2, 3, size, size),)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            opset_version=modelio.TARGET_OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
            optimize=True,
            verbose=False,
        )
    model = program.model
    _name_batch_dimension(model)
    return model


def _name_batch_dimension(model: ir.Model) -> None:
    """Call the symbolic first dimension of every graph input and output ``batch``."""
    for value in [*model.graph.inputs, *model.graph.outputs]:
        shape = value.shape
        if shape is not None and len(shape) and not isinstance(shape[0], int):
            value.shape = ir.Shape(["batch", *list(shape)[1:]])


def _clean(model: ir.Model) -> None:
    """Fold BatchNorm, drop exporter debug metadata, name nodes after their layers."""
    ir.passes.PassManager(
        [
            FoldBatchNormPass(),
            ir.passes.common.ClearMetadataAndDocStringPass(),
            ir.passes.common.RemoveUnusedNodesPass(),
            ir.passes.common.TopologicalSortPass(),
            NameAfterWeightsPass(),
        ]
    )(model)
    model.producer_name = "onnxq"
    model.producer_version = ""
    model.ir_version = max(model.ir_version, modelio.MIN_IR_VERSION)


def _compare_with_torch(torch, module, model: ir.Model, size: int, seed: int) -> float:
    """Max |ONNX Runtime − torch| on two random images; fails loudly if the export is wrong."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, size, size, generator=generator)
    with torch.no_grad():
        expected = module(pixels).numpy()
    session = runtime.create_session(model, ep="cpu")
    actual = session.run(None, {INPUT_NAME: pixels.numpy()})[0]
    difference = float(np.abs(actual - expected).max())
    if difference > 1e-3 * max(1.0, float(np.abs(expected).max())):
        raise OnnxqError(f"export check failed: ONNX Runtime differs from torch by {difference:.3g}")
    return difference


def exported_model(
    folder: str | os.PathLike,
    name: str,
    weights: str | os.PathLike | None = None,
    random_weights: bool = False,
    seed: int = 0,
) -> Path:
    """The float ONNX export of ``name``, exported on the first request only.

    The key covers the model name, the weights file's content, the export settings and the
    onnxq and torch versions; without a weights file, weights come from torch's cache as in
    ``onnxq export``.
    """
    key = digest(
        {
            "name": name,
            "weights": file_digest(weights) if weights is not None else None,
            "random_weights": random_weights,
            "seed": seed,
            "onnxq": __version__,
            "torch": _installed_version("torch"),
        }
    )
    path = Path(folder) / f"{name}-{key[:16]}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        export_model(name, path, None if weights is None else str(weights), random_weights, seed)
    return path


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
