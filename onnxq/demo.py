"""The embedded default job: EfficientNet-Lite0, real images, fp32 vs W8A8 vs W4A8.

The 4-bit rows use what onnxq recommends at 4 bits (README, "Rounding"): affine weights with
GPTQ rounding and bias correction, the classifier kept at 8 bits; the per-group row adds channel
reordering and decomposed scales, which bring its scale overhead close to per-channel's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from onnxq import accounting, data, evaluate, modelio, progress
from onnxq.config import QuantConfig
from onnxq.errors import OnnxqError
from onnxq.experiment import run_row
from onnxq.schemes import Scheme
from onnxq.tables import SWEEP_HEADER, Row, markdown_table

MODEL = "efficientnet_lite0"

#: (file tag, config, remark) of the quantized rows the demo shows.
CONFIGS = (
    (
        "w8a8",
        QuantConfig(
            weights=Scheme.parse("per-channel-symmetric", bits=8),
            features=Scheme.parse("per-tensor-affine", bits=8),
        ),
        "",
    ),
    (
        "w4a8_per_channel",
        QuantConfig(
            weights=Scheme.parse("per-channel-affine", bits=4),
            features=Scheme.parse("per-tensor-affine", bits=8),
            keep_8bit=("last",),
            rounding="gptq",
            bias_correction=True,
        ),
        "gptq, bias correction, classifier 8-bit",
    ),
    (
        "w4a8_gs32",
        QuantConfig(
            weights=Scheme.parse("per-group-affine", bits=4, group_size=32, observer="mse"),
            features=Scheme.parse("per-tensor-affine", bits=8),
            keep_8bit=("last",),
            reorder="auto",
            decompose_scales=True,
            rounding="gptq",
            bias_correction=True,
        ),
        "w: mse, reorder, scale decomp, gptq, bias correction, classifier 8-bit",
    ),
)


def foolbox_images() -> data.ImageSet:
    """The 20 labelled ImageNet images that the foolbox wheel ships (read as files)."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise OnnxqError(
            "no demo images: pip install 'onnxq[demo]' (foolbox ships 20 ImageNet images) "
            "or pass --data DIR"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return data.find_images(folder, pattern="imagenet_*")


def run_demo(data_dir: Path | None, workdir: Path, calib_size: int, ep: str) -> str:
    """Run the demo and return its table (markdown, the seed log's format)."""
    images = data.find_images(data_dir) if data_dir else foolbox_images()
    data.require_labels(images, data_dir or "foolbox/data")
    calibration, evaluation = _split(images, calib_size)
    workdir.mkdir(parents=True, exist_ok=True)
    float_path = workdir / f"{MODEL}.onnx"
    if not float_path.exists():
        from onnxq.models.export import export_model

        export_model(MODEL, float_path)
    preprocessing = modelio.get_preprocessing(modelio.load_model(float_path))
    baseline = evaluate.evaluate(str(float_path), evaluation, preprocessing, ep=ep)
    rows = [Row.float_baseline(MODEL, baseline)]
    for tag, config, remark in CONFIGS:
        output = workdir / f"{MODEL}_{tag}.onnx"
        row = run_row(float_path, config, calibration, evaluation, output, ep=ep)
        wbit = accounting.account(modelio.load_model(output)).equivalent_bits
        rows.append(Row.from_config(MODEL, config, row.result, remark, wbit=wbit))
    progress.status(
        f"calibrated on {len(calibration)} images, evaluated on {len(evaluation)}"
        + (" (the same images)" if calibration is evaluation else " (disjoint)")
        + f" with {baseline.provider}; models in {workdir}/"
    )
    return markdown_table(rows, SWEEP_HEADER)


def _split(images: data.ImageSet, calib_size: int) -> tuple[data.ImageSet, data.ImageSet]:
    """Disjoint calibration/evaluation sets when there are enough images, else the same set."""
    if len(images) > calib_size:
        return images.split(calib_size)
    return images, images
