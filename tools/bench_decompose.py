"""Scale decomposition on EfficientNet-Lite0: accuracy and equivalent bits, plain vs decomposed.

EfficientNet-Lite0 (real weights) is exported once into the work folder. The 500 sample images
are split (seed 0) into 128 calibration and 372 evaluation images. Rows: W4A8, weights
per-group-affine gs 32/16/8/4/1 with the MSE observer, features per-tensor-affine 8-bit
(min/max); the layers named by ``--keep`` stay at 8 bits (default: the first and last layers and
the depthwise convolutions, whose 3×3 single-channel kernels are one group per channel whatever
the group size). Each group size runs with plain fp32 group scales, then with
``--decompose-scales`` (4-bit scale codes). The table is the seed log's "scale decomp" format:
decomposed top-1/top-5 with the plain figure in parentheses, and the equivalent weight bits
(``onnxq report``'s accounting) likewise. Features are calibrated once (cached) for all rows.

    python tools/bench_decompose.py [--data ../shared/data/imagenet-sample]
        [--workdir artifacts/bench_decompose] [--output FILE] [--group-sizes 32,16,8,4,1]
        [--keep first,last,depthwise]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from onnxq.models.export import export_model

from onnxq.base import progress
from onnxq.calibration.cache import CalibrationCache
from onnxq.core.config import QuantConfig
from onnxq.core.schemes import Scheme
from onnxq.experiments.experiment import run_row
from onnxq.experiments.tables import HEADER, Reference, Row, markdown_table
from onnxq.io import data
from onnxq.pipeline import modelio
from onnxq.reporting import evaluate
from onnxq.reporting.accounting import account

REPO = Path(__file__).resolve().parent.parent
MODEL = "efficientnet_lite0"
CALIBRATION_IMAGES = 128
COLUMNS = HEADER[:-1] + ("Equivalent wbit",)


def config(gs: int, decompose: bool, keep: tuple[str, ...]) -> QuantConfig:
    return QuantConfig(
        weights=Scheme.parse("per-group-affine", bits=4, group_size=gs, observer="mse"),
        features=Scheme.parse("per-tensor-affine", bits=8),
        calib_size=CALIBRATION_IMAGES,
        keep_8bit=keep,
        decompose_scales=decompose,
        rounding="nearest",  # the decomposition itself; GPTQ rows are in bench_peers
    )


def kept_layers(names: str) -> tuple[str, ...]:
    """``--keep`` as ``keep_8bit`` (``depthwise`` is one of its keywords)."""
    return tuple(part.strip() for part in names.split(",") if part.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--workdir", type=Path, default=REPO / "artifacts/bench_decompose")
    parser.add_argument("--output", type=Path, help="markdown file (default: WORKDIR/table.md)")
    parser.add_argument("--group-sizes", default="32,16,8,4,1")
    parser.add_argument("--keep", default="first,last,depthwise", help="layers kept at 8 bits")
    args = parser.parse_args()
    progress.set_quiet(True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    float_path = args.workdir / f"{MODEL}.onnx"
    if not float_path.exists():
        export_model(MODEL, float_path)
    calibration, evaluation = data.find_images(args.data).split(CALIBRATION_IMAGES, seed=0)
    cache = CalibrationCache(args.workdir / "calibration")
    keep = kept_layers(args.keep)

    float_model = modelio.load_model(float_path)
    preprocessing = modelio.get_preprocessing(float_model)
    fp32 = evaluate.evaluate(float_model, evaluation, preprocessing, ep="cpu")
    rows = [Row.float_baseline(MODEL, fp32)]
    print(markdown_table(rows, COLUMNS), flush=True)
    for gs in (int(size) for size in args.group_sizes.split(",")):
        results = {}
        for decompose in (False, True):
            start = time.perf_counter()
            row = run_row(
                float_path, config(gs, decompose, keep), calibration, evaluation, ep="cpu",
                calibration_cache=cache,
            )
            results[decompose] = (row, account(row.quantized.model).equivalent_bits)
            print(f"<!-- gs {gs} decomposed={decompose}: quantize {row.quantize_seconds:.0f} s, "
                  f"row {time.perf_counter() - start:.0f} s -->", flush=True)
        (plain, plain_bits), (decomposed, bits) = results[False], results[True]
        reference = Reference(plain.result.top1, plain.result.top5, plain_bits, style="value")
        table_row = Row.from_config(
            MODEL, decomposed.config, decomposed.result, wbit=bits, reference=reference
        )
        rows.append(table_row)
        print(markdown_table([table_row], COLUMNS, header=False), flush=True)
    output = args.output or args.workdir / "table.md"
    output.write_text(markdown_table(rows, COLUMNS) + "\n")
    print(f"\nwrote {output} ({len(evaluation)} evaluation images, {len(calibration)} calibration)")
    print(f"kept at 8 bits: {args.keep}; configuration (gs 8, decomposed): "
          f"{config(8, True, keep).to_json()}")


if __name__ == "__main__":
    main()
