"""The embedded default job: EfficientNet-Lite0, real images, fp32 vs W8A8 vs W4A8.

Every row uses the defaults that ``onnxq quantize`` applies (``QuantConfig.resolved``): W8A8 is
the CLI's default W8A8 (restricted symmetric per-channel weights, fused placement, rounded to
nearest), and the 4-bit rows get GPTQ rounding and bias correction without asking. They add what
onnxq recommends at 4 bits (README, "Rounding"): affine weights and the classifier kept at 8
bits; the per-group row adds channel reordering and decomposed scales, which bring its scale
overhead close to per-channel's.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from onnxq.base.errors import OnnxqError
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.experiments.experiment import run_row
from onnxq.experiments.tables import DEMO_HEADER, Row, markdown_table
from onnxq.io import data
from onnxq.pipeline import modelio
from onnxq.reporting import accounting, evaluate

MODEL = "efficientnet_lite0"

#: (file tag, config, remark) of the quantized rows the demo shows.
CONFIGS = (
    (
        "w8a8",
        QuantConfig(
            weights=Scheme.parse("per-channel-symmetric", bits=8),
            features=Scheme.parse("per-tensor-affine", bits=8),
        ),
        "the CLI's W8A8 default",
    ),
    (
        "w4a8_per_channel",
        QuantConfig(
            weights=Scheme.parse("per-channel-affine", bits=4),
            features=Scheme.parse("per-tensor-affine", bits=8),
            keep_8bit=("last",),
        ),
        "classifier 8-bit",
    ),
    (
        "w4a8_gs32",
        QuantConfig(
            weights=Scheme.parse("per-group-affine", bits=4, group_size=32, observer="mse"),
            features=Scheme.parse("per-tensor-affine", bits=8),
            keep_8bit=("last",),
            reorder="auto",
            decompose_scales=True,
        ),
        "w: mse, reorder, scale decomp, classifier 8-bit",
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
    """Run the demo and return its table (markdown, the seed log's format) and a note on the
    images it used."""
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
        remark = ", ".join(part for part in [remark, *row.config.rounding_notes()] if part)
        quantized = Row.from_config(MODEL, row.config, row.result, remark, wbit=wbit)
        rows.append(dataclasses.replace(quantized, agreement=baseline.agreement(row.result)))
    return markdown_table(rows, DEMO_HEADER) + "\n" + _images_note(
        calibration, evaluation, baseline.provider, workdir
    )


def demo_config(tag: str) -> QuantConfig:
    """The demo's (unresolved) config of the row ``tag``."""
    return {name: config for name, config, _ in CONFIGS}[tag]


def _images_note(
    calibration: data.ImageSet, evaluation: data.ImageSet, provider: str, workdir: Path
) -> str:
    if calibration is evaluation:
        where = (
            f"Calibrated and evaluated on the same {len(evaluation)} images: top-1 here is "
            "optimistic; fp32 agreement (how often the quantized model keeps the float model's "
            "class) is what so few images can show. --data DIR with more images than "
            "--calib-size splits them into disjoint sets."
        )
    else:
        where = (
            f"Calibrated on {len(calibration)} images, evaluated on {len(evaluation)} others."
        )
    return f"{where} Ran on {provider}; models in {workdir}/.\n"


def _split(images: data.ImageSet, calib_size: int) -> tuple[data.ImageSet, data.ImageSet]:
    """Disjoint calibration/evaluation sets when there are enough images, else the same set."""
    if len(images) > calib_size:
        return images.split(calib_size)
    return images, images
