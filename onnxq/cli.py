"""The ``onnxq`` command line: export, quantize, eval, demo."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from typer.exceptions import TyperException

from onnxq import __version__, failures
from onnxq.base import outputs, progress
from onnxq.base.constants import RECONSTRUCT_ITERATIONS
from onnxq.base.errors import OnnxqError
from onnxq.core.schemes import feature_observer, scheme_names

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
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an unexpected error.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what each graph pass changed.")] = False,
) -> None:
    progress.set_quiet(quiet)
    progress.set_verbose(verbose)


@app.command()
def export(
    model: Annotated[Optional[str], typer.Argument(help="resnet18, resnet50, efficientnet_lite0, any torchvision classifier.")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Output .onnx (default: MODEL.onnx).")] = None,
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
    output = outputs.check_output(output or Path(f"{model}.onnx"))
    result = export_model(
        model, output, None if weights is None else str(weights),
        random_weights, seed,
    )
    typer.echo(
        f"wrote {result.path} ({result.model}, weights {result.weights}; "
        f"max |onnx - torch| = {result.max_abs_difference:.2g})"
    )


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="The float ONNX model.")],
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Output .onnx (default: MODEL_wXaY.onnx).")] = None,
    calib: Annotated[Optional[Path], typer.Option(help="Folder of calibration images.")] = None,
    wbits: Annotated[int, typer.Option(help="Weight bits (2..8).")] = 8,
    scheme: Annotated[str, typer.Option(help=f"Weight scheme: {SCHEMES}.")] = "per-channel-symmetric",
    gs: Annotated[Optional[int], typer.Option("--gs", help="Weight group size in input channels (per-group).")] = None,
    observer: Annotated[str, typer.Option(help="Weight observer: minmax, mse, percentile.")] = "minmax",
    fbits: Annotated[int, typer.Option(help="Feature (activation) bits (2..8).")] = 8,
    f_scheme: Annotated[str, typer.Option("--f-scheme", help=f"Feature scheme: {SCHEMES}.")] = "per-tensor-affine",
    f_gs: Annotated[Optional[int], typer.Option("--f-gs", help="Feature group size in channels (per-group).")] = None,
    f_observer: Annotated[str, typer.Option("--f-observer", help="Feature observer: minmax, mse, percentile, or auto (mse for features under 8 bits, minmax at 8).")] = "auto",
    percentile: Annotated[float, typer.Option(help="Percentile for the percentile observers.")] = 99.99,
    symmetric_range: Annotated[str, typer.Option("--symmetric-range", help="Grid of symmetric schemes: restricted (codes ±(2^(b-1)-1), scale absmax/(2^(b-1)-1): both extremes representable) or full (codes -2^(b-1)..2^(b-1)-1, scale 2·absmax/(2^b-1): the positive extreme clips by half a step).")] = "restricted",
    weight_only: Annotated[bool, typer.Option("--weight-only", help="Keep features in float.")] = False,
    reduce_range: Annotated[Optional[bool], typer.Option("--reduce-range/--full-range", help="8-bit symmetric weights with 7-bit codes (±63), which ONNX Runtime's int8 kernels multiply without saturating on x86 CPUs without VNNI (AVX2: AMD Zen 1-3, Intel before Cascade Lake), or all 8 bits (default: reduced when quantizing on such a CPU with quantized features).")] = None,
    rounding: Annotated[str, typer.Option(help="Weight codes on the observer's grid: nearest; gptq (compensates each layer's rounding error over its calibration inputs); reconstruct (starts from gptq, then learns each block's rounding and feature scales against the float block's output; needs torch: pip install 'onnxq[reconstruct]'); auto: gptq for weights under 8 bits when --calib is given, else nearest.")] = "auto",
    bias_correction: Annotated[Optional[bool], typer.Option("--bias-correction/--no-bias-correction", help="Subtract each layer's mean output shift, measured on the calibration images, from its bias (default: with gptq rounding).")] = None,
    gptq_inputs: Annotated[str, typer.Option("--gptq-inputs", help="Where GPTQ and bias correction measure each layer's inputs: float (the float network, one calibration pass) or quantized (stage by stage, the network whose earlier stages are already quantized, fitted to the float network's output; one more pass per stage).")] = "float",
    gptq_stages: Annotated[int, typer.Option("--gptq-stages", min=1, help="Stages of --gptq-inputs quantized: the layers in graph order, cut into this many runs (as many as layers: layer by layer).")] = 4,
    reconstruct_iters: Annotated[int, typer.Option("--reconstruct-iters", min=0, help="Optimisation steps per block of --rounding reconstruct (time grows in proportion).")] = RECONSTRUCT_ITERATIONS,
    reconstruct_seed: Annotated[Optional[int], typer.Option("--reconstruct-seed", min=0, help="Seed of --rounding reconstruct's random batches, crops and QDrop masks (default: --seed). Runs that differ only in it differ by the optimisation's own noise.")] = None,
    decompose_scales: Annotated[bool, typer.Option("--decompose-scales", help="Store per-group weight scales as a per-channel float times low-bit integer codes.")] = False,
    scale_bits: Annotated[Optional[int], typer.Option("--scale-bits", help="Bits of the decomposed scale codes (2..8; default 4). Needs --decompose-scales.")] = None,
    smooth: Annotated[bool, typer.Option("--smooth", help="Move activation range into the weights that read it (SmoothQuant), folded into the weights: no runtime op.")] = False,
    alpha: Annotated[Optional[str], typer.Option(help="Smoothing strength in [0, 1], or auto: per channel set, the α (or none) with the lowest estimated quantization error.")] = None,
    act_scale: Annotated[Optional[str], typer.Option("--act-scale", help="Activation range in the smoothing scale: absmax, absmax*10, absmax/10.")] = None,
    smooth_mul: Annotated[bool, typer.Option("--smooth-mul", help="Also smooth sets that cannot be folded (e.g. through ReLU6) with an explicit per-channel Mul, a runtime op.")] = False,
    reorder: Annotated[Optional[str], typer.Option(help="Permute channels so that per-group scales cover similar ranges, by: auto, absmax, max, weight-absmax, weight-max.")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Check that --smooth/--reorder keep the float outputs (max relative difference 1e-4).")] = False,
    select_passes: Annotated[bool, typer.Option("--select-passes/--no-select-passes", help="With --smooth (alpha auto) or --reorder auto: probe every on/off combination of those passes and keep a pass only where the quantized outputs on the calibration images come clearly closer to fp32 (KL lower by two standard errors).")] = True,
    calib_size: Annotated[int, typer.Option(min=1, help="Calibration images (a seeded sample).")] = 128,
    keep_8bit: Annotated[str, typer.Option("--keep-8bit", help="Layers kept at 8 bit: first, last, depthwise (every depthwise Conv), depthwise3x3 (those with 3x3 kernels), highres (layers on maps at most 4x smaller than the image: the stem and first stage), node names or op types, comma-separated.")] = "",
    bit_budget: Annotated[Optional[float], typer.Option("--bit-budget", help="Equivalent weight bits to spend (as report counts them: Conv weights with their scales): besides --keep-8bit, keep at 8 bits the layers whose low-bit weights move the output most per added bit, each measured alone on the calibration images (e.g. 4.3).")] = None,
    ops: Annotated[str, typer.Option(help="Op types whose inputs are quantized, comma-separated (add Add, GlobalAveragePool, ... to quantize their inputs too).")] = "Conv,Gemm,MatMul",
    f_placement: Annotated[str, typer.Option("--f-placement", help="Where feature Q/DQ go: inputs (of --ops), fused (inputs and outputs of every op with an integer kernel: the layout ONNX Runtime runs as int8 kernels) or auto (fused for 8-bit weights and features, else inputs).")] = "auto",
    preprocess: Annotated[Optional[str], typer.Option(help="Override the model's preprocessing: torchvision, efficientnet-lite, inception, caffe or JSON (resize, crop, interpolation, mean, std, channels rgb|bgr, input_range 1|255).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Calibration batch size (memory grows with it).")] = 4,
    ep: Annotated[str, typer.Option(help="Execution provider: auto, cuda, cpu.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the calibration sample.")] = 0,
) -> None:
    """Quantize an ONNX CNN to a standard QDQ model."""
    from onnxq.core.config import QuantConfig
    from onnxq.core.schemes import Scheme
    from onnxq.io import data, preprocessing
    from onnxq.pipeline.quantize import quantize_file

    weights = Scheme.parse(
        scheme, bits=wbits, group_size=gs, observer=observer, percentile=percentile,
        symmetric_range=symmetric_range,
    )
    features = None if weight_only else Scheme.parse(
        f_scheme, bits=fbits, group_size=f_gs, observer=feature_observer(f_observer, fbits),
        percentile=percentile,
        symmetric_range=symmetric_range,
    )
    config = QuantConfig(
        weights=weights,
        features=features,
        calib_size=calib_size,
        keep_8bit=_split(keep_8bit),
        bit_budget=bit_budget,
        ops=_split(ops),
        seed=seed,
        placement=f_placement,
        **_decomposition(decompose_scales, scale_bits),
        rounding=rounding,
        bias_correction=bias_correction,
        reduce_range=reduce_range,
        gptq_inputs=gptq_inputs,
        gptq_stages=gptq_stages,
        reconstruct_iterations=reconstruct_iters,
        reconstruct_seed=reconstruct_seed,
        **_smoothing(smooth, alpha, act_scale, smooth_mul),
        reorder=reorder,
    )
    output = outputs.check_output(output or model.with_name(f"{model.stem}_{_tag(config)}.onnx"))
    images = data.find_images(calib) if calib is not None else None
    result = quantize_file(
        model, output, config, images, preprocessing.resolve(preprocess), batch_size, ep, verify,
        select_passes,
    )
    _print_quantize_summary(result, output)


def _decomposition(decompose_scales: bool, scale_bits: int | None) -> dict:
    """The QuantConfig fields of ``--decompose-scales``; ``--scale-bits`` alone is a mistake."""
    if scale_bits is not None and not decompose_scales:
        raise OnnxqError("--scale-bits needs --decompose-scales")
    return {"decompose_scales": decompose_scales, "scale_bits": 4 if scale_bits is None else scale_bits}


def _smoothing(smooth: bool, alpha: str | None, act_scale: str | None, mul: bool) -> dict:
    """The QuantConfig fields of ``--smooth``; its options alone are a mistake."""
    if not smooth:
        if alpha is not None or act_scale is not None or mul:
            raise OnnxqError("--alpha, --act-scale and --smooth-mul need --smooth")
        return {}
    if alpha is None or alpha == "auto":
        value: float | str = "auto"
    else:
        try:
            value = float(alpha)
        except ValueError:
            raise OnnxqError(f"--alpha must be 'auto' or a number in [0, 1], got {alpha!r}") from None
    return {"smooth_alpha": value, "act_scale": act_scale or "absmax", "smooth_mul": mul}


def _tag(config) -> str:
    features = f"a{config.features.bits}" if config.features else "a32"
    return f"w{config.weights.bits}{features}"


def _rounding_note(config) -> str:
    return "".join(f", {note}" for note in config.rounding_notes())


def _print_quantize_summary(result, output: Path) -> None:
    plan = result.plan
    typer.echo(
        f"wrote {output}: {len(plan.weights)} weights ({result.config.weights.describe()}), "
        f"{len(plan.features)} feature tensors"
        + (f" ({result.config.features.describe()})" if result.config.features else "")
        + _rounding_note(result.config)
        + f", calibrated on {result.calibration_images} images in {result.seconds:.1f} s"
    )
    for node, reason in plan.skipped:
        typer.echo(f"  skipped {node}: {reason}")
    if result.pass_selection:
        from onnxq.pipeline.pass_selection import describe, records

        typer.echo(f"automatic channel passes: {describe(records(result.pass_selection))}")
    if result.channel_sets:
        from onnxq.pipeline.channel_rewrites import summary_lines

        for line in summary_lines(result.channel_sets):
            typer.echo(line)


@app.command(name="eval")
def evaluate_command(
    model: Annotated[Path, typer.Argument(help="An ONNX classifier (float or quantized).")],
    data_dir: Annotated[Path, typer.Option("--data", help="Labelled images: <wnid>/ folders, <wnid>_*.JPEG or *_<index>.jpg.")],
    limit: Annotated[Optional[int], typer.Option(min=1, help="Evaluate only the first N images.")] = None,
    json_path: Annotated[Optional[str], typer.Option("--json", help="Also write the results as JSON.")] = None,
    preprocess: Annotated[Optional[str], typer.Option(help="Override the model's preprocessing (a preset or JSON, as for quantize).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size.")] = 32,
    ep: Annotated[str, typer.Option(help="Execution provider: auto, cuda, cpu.")] = "auto",
    fold_weights: Annotated[bool, typer.Option("--fold-weights", help="Let ONNX Runtime fold weight DequantizeLinear into float at load (fast 4-bit/per-group models; turns off int8 kernels).")] = False,
    runtime_name: Annotated[str, typer.Option("--runtime", help="onnxruntime (with --ep) or openvino (its CPU plugin, default precision hint; pip install 'onnxq[openvino]').")] = "onnxruntime",
) -> None:
    """Top-1/top-5 accuracy and images/s of a classifier on labelled images."""
    from onnxq.io import data, preprocessing, runtime
    from onnxq.pipeline import modelio
    from onnxq.reporting import evaluate

    runtime.check_runtime(runtime_name)
    if runtime_name == "openvino" and (fold_weights or ep == "cuda"):
        raise OnnxqError("--fold-weights and --ep cuda are ONNX Runtime settings; --runtime openvino runs on its CPU plugin")
    if json_path is not None:
        outputs.check_output(json_path, "JSON output")
    loaded = modelio.load_model(model)
    modelio.check_classifier(loaded, model)
    images = data.find_images(data_dir).head(limit)
    data.require_labels(images, data_dir)
    chosen = modelio.choose_preprocessing(loaded, preprocessing.resolve(preprocess), model)
    session_config = runtime.FOLD_WEIGHTS_AT_LOAD if fold_weights else None
    result = evaluate.evaluate(
        loaded, images, chosen, batch_size, ep, session_config=session_config,
        runtime_name=runtime_name,
    )
    typer.echo(
        f"{model.name}: top-1 {result.top1:.2f}  top-5 {result.top5:.2f}  "
        f"({result.images} images, {result.images_per_second:.1f} images/s, {result.provider})"
    )
    if json_path is not None:
        record = {"model": str(model), **result.to_dict()}
        outputs.write_text(json_path, json.dumps(record, indent=2) + "\n")


@app.command()
def report(
    model: Annotated[Path, typer.Argument(help="A quantized ONNX model (onnxq's, or any QDQ model).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    as_markdown: Annotated[bool, typer.Option("--markdown", help="Print markdown instead of a table.")] = False,
    include_fc: Annotated[bool, typer.Option("--include-fc", help="Count Gemm/MatMul weights in the totals (by default only Conv weights count, as in the seed log).")] = False,
) -> None:
    """Per-layer weight bits, scale overhead and equivalent bits; sizes; feature schemes."""
    from onnxq.pipeline import modelio
    from onnxq.reporting import accounting
    from onnxq.reporting import report as reports

    if as_json and as_markdown:
        raise OnnxqError("choose one of --json and --markdown")
    result = accounting.account(modelio.load_model(model), include_fc)
    if as_json:
        typer.echo(result.to_json())
    elif as_markdown:
        typer.echo(reports.markdown(result), nl=False)
    else:
        reports.print_table(result, str(model))


@app.command()
def deploy(
    model: Annotated[Path, typer.Argument(help="A quantized ONNX model.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output .onnx.")],
    fold_weights: Annotated[bool, typer.Option("--fold-weights", help="Fold every weight DequantizeLinear into float weights (any runtime, fp32-sized file).")] = False,
    runtime: Annotated[str, typer.Option(help="The runtime to deploy for: onnxruntime (other weights folded into float) or openvino (other weights kept compressed, which OpenVINO decompresses at compile time; only forms it cannot read are folded).")] = "onnxruntime",
) -> None:
    """Rewrite a quantized model for fast CPU inference, weights bit-identical.

    By default, weights of layers that can run as int8 kernels become per-axis int8 (4-bit
    per-channel weights included) and all other weight DequantizeLinear nodes are folded into
    float (--runtime openvino keeps them compressed); --fold-weights folds them all.
    """
    from onnxq.io.runtime import check_runtime
    from onnxq.pipeline import modelio
    from onnxq.pipeline.deploy import deploy as deploy_model

    check_runtime(runtime)
    output = outputs.check_output(output)
    loaded = modelio.load_model(model)
    result = deploy_model(loaded, fold_weights, runtime)
    modelio.save_model(loaded, output)
    size = output.stat().st_size / 2**20
    typer.echo(
        f"wrote {output} ({size:.1f} MiB): {len(result.integer_kernels)} layers run as int8 "
        f"kernels ({len(result.widened)} re-stored as int8), {len(result.folded)} weights "
        "folded to float"
    )


@app.command()
def demo(
    data_dir: Annotated[Optional[Path], typer.Option("--data", help="Labelled images (default: the 20 ImageNet images shipped in foolbox).")] = None,
    workdir: Annotated[Path, typer.Option(help="Where the exported and quantized models go.")] = Path("onnxq-demo"),
    calib_size: Annotated[int, typer.Option(min=1, help="Calibration images.")] = 128,
    ep: Annotated[str, typer.Option(help="Execution provider: auto, cuda, cpu.")] = "auto",
) -> None:
    """Export EfficientNet-Lite0, quantize it W8A8 and W4A8, and compare accuracy."""
    from onnxq.experiments.demo import run_demo

    outputs.check_output_folder(workdir, "demo folder")
    typer.echo(run_demo(data_dir, workdir, calib_size, ep))


@app.command()
def sweep(
    specs: Annotated[list[Path], typer.Argument(help="Sweep specifications (TOML, see docs/sweeps.md).")],
    data_dir: Annotated[Path, typer.Option("--data", help="The image folder that the specs' \\[data] folders are relative to.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where results.jsonl, the tables (SPEC.md) and plots (SPEC.png) go.")] = Path("results"),
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Runs at once on this machine, each in its own process.")] = 1,
    ray: Annotated[Optional[str], typer.Option("--ray", metavar="[ADDRESS]", help="Run the rows as Ray tasks. Alone: Ray's default (RAY_ADDRESS, a cluster started on this machine, else a new local one); or an address (host:port, ray://host:port).")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="ONNX Runtime threads per run (default: cores / jobs; with --ray, 4 CPUs per task).")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Cache of exported models and calibrations (default: OUT/cache).")] = None,
    save_models: Annotated[bool, typer.Option("--save-models", help="Also keep every quantized model in OUT/models/.")] = False,
    ep: Annotated[str, typer.Option(help="Execution provider: auto, cuda, cpu.")] = "auto",
    runtime: Annotated[str, typer.Option(help="Evaluate on onnxruntime or openvino (OpenVINO's CPU plugin; runs get their own ids). Calibration always runs on ONNX Runtime.")] = "onnxruntime",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the runs still to do, and run nothing.")] = False,
) -> None:
    """Run the tables of sweep specs: resumable, cached, on this machine or a Ray cluster."""
    from onnxq.experiments.sweep import SweepOptions, run_sweep

    outputs.check_output_folder(out, "sweep output folder")
    options = SweepOptions(
        data_dir, out, cache, jobs, ray, threads, ep, save_models, dry_run, runtime
    )
    summary = run_sweep(specs, options)
    if dry_run:
        typer.echo(f"{summary.runs} runs: {summary.done_before} done, {len(summary.pending)} to run")
        for run in summary.pending:
            typer.echo(f"  {run}")
        return
    typer.echo(
        f"{summary.runs} runs: {summary.done_before} done before, {summary.ran} ran, "
        f"{len(summary.failures)} failed"
    )
    for path in summary.outputs:
        typer.echo(f"wrote {path}")
    for run, message in summary.failures:
        typer.echo(f"failed: {run}: {message}", err=True)
    if summary.failures:
        raise typer.Exit(1)


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _ray_without_address(args: list[str]) -> list[str]:
    """``--ray`` with no address (last, or before another option) means Ray's default."""
    if "--ray" not in args:
        return args
    from onnxq.experiments.sweep import RAY_DEFAULT_ADDRESS

    result = []
    for index, arg in enumerate(args):
        result.append(arg)
        if arg == "--ray" and (index + 1 == len(args) or args[index + 1].startswith("-")):
            result.append(RAY_DEFAULT_ADDRESS)
    return result


def main(argv: list[str] | None = None) -> None:
    """Entry point and error boundary: every expected failure is one line on stderr and exit
    status 2 (``onnxq.failures``); Ctrl-C exits 130 and SIGTERM 143, removing partial files."""
    args = sys.argv[1:] if argv is None else list(argv)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        _reject_repeated_options(args)
        status = app(args=_ray_without_address(args), standalone_mode=False)
    except typer.Exit as exit_:
        status = exit_.exit_code
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", 130, prefix="onnxq: ")
    except TyperException as error:  # usage: unknown option, bad value, missing argument
        if type(error).__name__ == "NoArgsIsHelpError":
            typer.echo(error.ctx.get_help())
            sys.exit(0)
        _fail(_usage_message(error))
    except Exception as error:  # noqa: BLE001 - the boundary: nothing else reaches the user
        if "--debug" in args:
            raise
        message = failures.user_message(error)
        if message is None:
            _fail(f"{failures.unexpected(error)} (rerun with --debug for the traceback)", 1)
        _fail(message)
    if status == 130:  # typer turns Ctrl-C inside a command into exit status 130
        _fail("interrupted", 130, prefix="onnxq: ")
    sys.exit(status if isinstance(status, int) else 0)


def _usage_message(error: TyperException) -> str:
    """The usage error and the command it concerns, on one line."""
    context = getattr(error, "ctx", None)
    command = f" (onnxq {context.info_name} --help)" if context and context.parent else ""
    message = error.format_message() if hasattr(error, "format_message") else str(error)
    return " ".join(message.split()) + command


def _fail(message: str, status: int = 2, prefix: str = "onnxq: error: ") -> NoReturn:
    print(prefix + message, file=sys.stderr)
    sys.exit(status)


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM: remove the temporary files of writes under way and exit 143."""
    outputs.remove_temporaries()
    _fail("terminated", 128 + signum, prefix="onnxq: ")


def _reject_repeated_options(args: list[str]) -> None:
    """An option given twice would silently take its last value; say so instead."""
    seen: set[str] = set()
    for arg in args:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if not name.startswith("-") or name == "-" or name[1:2].isdigit():
            continue
        name = _SHORT_OPTIONS.get(name, name)
        if name in seen:
            raise OnnxqError(f"option {name} given twice (each option takes one value)")
        seen.add(name)


#: Short options and their long names, so that ``-o a -o b`` and ``-o a --output b`` are caught.
_SHORT_OPTIONS = {"-o": "--output", "-q": "--quiet", "-j": "--jobs"}
