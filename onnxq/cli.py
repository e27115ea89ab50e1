"""The ``onnxq`` command line: export, quantize, eval, demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from onnxq import __version__, progress
from onnxq.errors import OnnxqError
from onnxq.schemes import scheme_names

app = typer.Typer(
    name="onnxq",
    help="Low-bit post-training quantization of ImageNet CNNs as ONNX graph transformations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

SCHEMES = ", ".join(scheme_names())


def _version(value: bool) -> None:
    if value:
        typer.echo(f"onnxq {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    progress.set_quiet(quiet)


@app.command()
def export(
    model: Annotated[Optional[str], typer.Argument(help="resnet18, resnet50, efficientnet_lite0, any torchvision classifier.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output .onnx (default: MODEL.onnx).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="A local state dict to load.")] = None,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Seeded random weights (structure tests).")] = False,
    seed: Annotated[int, typer.Option(help="Seed for --random-weights and the export check.")] = 0,
    list_models: Annotated[bool, typer.Option("--list", help="List the model names and exit.")] = False,
) -> None:
    """Export a torch classifier to opset-21 ONNX (BatchNorm folded, preprocessing recorded)."""
    from onnxq.models.export import export_model, model_names

    if list_models:
        typer.echo("\n".join(model_names()))
        return
    if model is None:
        raise OnnxqError("name a model to export (onnxq export --list shows them)")
    result = export_model(
        model, output or Path(f"{model}.onnx"), None if weights is None else str(weights),
        random_weights, seed,
    )
    typer.echo(
        f"wrote {result.path} ({result.model}, weights {result.weights}; "
        f"max |onnx - torch| = {result.max_abs_difference:.2g})"
    )


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="The float ONNX model.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output .onnx (default: MODEL_wXaY.onnx).")] = None,
    calib: Annotated[Optional[Path], typer.Option(help="Folder of calibration images.")] = None,
    wbits: Annotated[int, typer.Option(help="Weight bits (2..8).")] = 8,
    scheme: Annotated[str, typer.Option(help=f"Weight scheme: {SCHEMES}.")] = "per-channel-symmetric",
    gs: Annotated[Optional[int], typer.Option("--gs", help="Weight group size in input channels (per-group).")] = None,
    observer: Annotated[str, typer.Option(help="Weight observer: minmax, mse, percentile.")] = "minmax",
    fbits: Annotated[int, typer.Option(help="Feature (activation) bits (2..8).")] = 8,
    f_scheme: Annotated[str, typer.Option("--f-scheme", help=f"Feature scheme: {SCHEMES}.")] = "per-tensor-affine",
    f_gs: Annotated[Optional[int], typer.Option("--f-gs", help="Feature group size in channels (per-group).")] = None,
    f_observer: Annotated[str, typer.Option("--f-observer", help="Feature observer: minmax, mse, percentile.")] = "minmax",
    percentile: Annotated[float, typer.Option(help="Percentile for the percentile observers.")] = 99.99,
    weight_only: Annotated[bool, typer.Option("--weight-only", help="Keep features in float.")] = False,
    calib_size: Annotated[int, typer.Option(help="Calibration images (a seeded sample).")] = 128,
    keep_8bit: Annotated[str, typer.Option("--keep-8bit", help="Layers kept at 8 bit: first, last, node names or op types, comma-separated.")] = "",
    ops: Annotated[str, typer.Option(help="Op types whose inputs are quantized, comma-separated (add Add, GlobalAveragePool, ... to quantize their inputs too).")] = "Conv,Gemm,MatMul",
    preprocess: Annotated[Optional[str], typer.Option(help="Override the model's preprocessing: torchvision, efficientnet-lite, inception or JSON.")] = None,
    batch_size: Annotated[int, typer.Option(help="Calibration batch size.")] = 16,
    ep: Annotated[str, typer.Option(help="Execution provider: auto, cuda, cpu.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the calibration sample.")] = 0,
) -> None:
    """Quantize an ONNX CNN to a standard QDQ model."""
    from onnxq import data, preprocessing
    from onnxq.config import QuantConfig
    from onnxq.quantize import quantize_file
    from onnxq.schemes import Scheme

    weights = Scheme.parse(scheme, bits=wbits, group_size=gs, observer=observer, percentile=percentile)
    features = None if weight_only else Scheme.parse(
        f_scheme, bits=fbits, group_size=f_gs, observer=f_observer, percentile=percentile
    )
    config = QuantConfig(
        weights=weights,
        features=features,
        calib_size=calib_size,
        keep_8bit=_split(keep_8bit),
        ops=_split(ops),
        seed=seed,
    )
    images = data.find_images(calib) if calib is not None else None
    output = output or model.with_name(f"{model.stem}_{_tag(config)}.onnx")
    result = quantize_file(
        model, output, config, images, preprocessing.resolve(preprocess), batch_size, ep
    )
    _print_quantize_summary(result, output)


def _tag(config) -> str:
    features = f"a{config.features.bits}" if config.features else "a32"
    return f"w{config.weights.bits}{features}"


def _print_quantize_summary(result, output: Path) -> None:
    plan = result.plan
    typer.echo(
        f"wrote {output}: {len(plan.weights)} weights ({result.config.weights.describe()}), "
        f"{len(plan.features)} feature tensors"
        + (f" ({result.config.features.describe()})" if result.config.features else "")
        + f", calibrated on {result.calibration_images} images in {result.seconds:.1f} s"
    )
    for node, reason in plan.skipped:
        typer.echo(f"  skipped {node}: {reason}")


@app.command(name="eval")
def evaluate_command(
    model: Annotated[Path, typer.Argument(help="An ONNX classifier (float or quantized).")],
    data_dir: Annotated[Path, typer.Option("--data", help="Labelled images: <wnid>/ folders, <wnid>_*.JPEG or *_<index>.jpg.")],
    limit: Annotated[Optional[int], typer.Option(help="Evaluate only the first N images.")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON.")] = None,
    preprocess: Annotated[Optional[str], typer.Option(help="Override the model's preprocessing.")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    ep: Annotated[str, typer.Option(help="Execution provider: auto, cuda, cpu.")] = "auto",
) -> None:
    """Top-1/top-5 accuracy and images/s of a classifier on labelled images."""
    from onnxq import data, evaluate, modelio, preprocessing

    loaded = modelio.load_model(model)
    images = data.find_images(data_dir).head(limit)
    data.require_labels(images, data_dir)
    chosen = preprocessing.resolve(preprocess) or modelio.get_preprocessing(loaded)
    if chosen is None:
        progress.status("[yellow]note:[/] the model records no preprocessing; using torchvision's")
        chosen = preprocessing.PRESETS["torchvision"]
    result = evaluate.evaluate(loaded, images, chosen, batch_size, ep)
    typer.echo(
        f"{model.name}: top-1 {result.top1:.2f}  top-5 {result.top5:.2f}  "
        f"({result.images} images, {result.images_per_second:.1f} images/s, {result.provider})"
    )
    if json_path is not None:
        record = {"model": str(model), **result.to_dict()}
        json_path.write_text(json.dumps(record, indent=2) + "\n")


@app.command()
def demo(
    data_dir: Annotated[Optional[Path], typer.Option("--data", help="Labelled images (default: the 20 ImageNet images shipped in foolbox).")] = None,
    workdir: Annotated[Path, typer.Option(help="Where the exported and quantized models go.")] = Path("onnxq-demo"),
    calib_size: Annotated[int, typer.Option(help="Calibration images.")] = 128,
    ep: Annotated[str, typer.Option(help="Execution provider: auto, cuda, cpu.")] = "auto",
) -> None:
    """Export EfficientNet-Lite0, quantize it W8A8 and W4A8, and compare accuracy."""
    from onnxq.demo import run_demo

    typer.echo(run_demo(data_dir, workdir, calib_size, ep))


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        app()
    except OnnxqError as error:
        print(f"onnxq: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("onnxq: interrupted", file=sys.stderr)
        sys.exit(130)
