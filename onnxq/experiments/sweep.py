"""``onnxq sweep``: run the tables of sweep specs, resumably, in parallel or on a Ray cluster.

Every row of a table is a *run* (a float model quantized with a config, or the float model
itself) identified by a digest of the model file, the config and the image lists. Finished runs
are appended to ``OUT/results.jsonl`` by this process only, as they finish; a rerun skips every
run already there. Exported models and calibrations are cached by content
(``onnxq.calibration.cache``), so a grid over weight settings calibrates once. Tables and plots are
written from the results file: ``OUT/<spec>.md`` and ``OUT/<spec>[-N].png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path

import onnx_ir as ir

from onnxq import __version__
from onnxq.base import progress
from onnxq.base.errors import OnnxqError
from onnxq.calibration.cache import (
    CalibrationCache,
    digest,
    file_digest,
    write_atomically,
)
from onnxq.core.config import QuantConfig, techniques_off
from onnxq.core.schemes import Granularity, Observer
from onnxq.experiments.experiment import run_row
from onnxq.experiments.plots import Point, plot_accuracy_vs_bits
from onnxq.experiments.spec import Run, Spec, Table, TableRow, load_spec
from onnxq.experiments.tables import Reference, Row, markdown_table
from onnxq.io import data, openvino_runtime, runtime
from onnxq.models.export import exported_model
from onnxq.pipeline import modelio
from onnxq.reporting import evaluate
from onnxq.reporting.accounting import account
from onnxq.reporting.evaluate import EvalResult

RESULTS_FILE = "results.jsonl"
#: ``--ray`` without an address: ``ray.init()``'s own choice (``RAY_ADDRESS``, a cluster
#: started on this machine, or a new local instance).
RAY_DEFAULT_ADDRESS = "default"
#: ``QuantConfig`` fields used only after calibration: runs that differ only in these share one.
_AFTER_CALIBRATION = (
    "weights", "decompose_scales", "scale_bits", "rounding", "bias_correction", "gptq_inputs",
    "gptq_stages", "reconstruct_iterations", "reconstruct_seed",
)


def equivalent_wbit(model: ir.Model) -> float | None:
    """Equivalent weight bits of a quantized model: DESIGN.md's accounting, as ``onnxq report``
    prints it (Conv weights; None when the model has none)."""
    bits = account(model).equivalent_bits
    return bits or None


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    data: Path  # the root that [data] folders are relative to
    out: Path
    cache: Path | None = None  # default: OUT/cache
    jobs: int = 1
    ray: str | None = None  # a Ray address, RAY_DEFAULT_ADDRESS, or None for no Ray
    threads: int | None = None  # ONNX Runtime threads per run
    ep: str = "auto"
    save_models: bool = False
    dry_run: bool = False
    runtime: str = "onnxruntime"  # evaluation runtime (``runtime.RUNTIMES``)

    @property
    def cache_dir(self) -> Path:
        return self.cache or self.out / "cache"


@dataclasses.dataclass(frozen=True)
class Task:
    """One run, self-contained so that another process or Ray node can execute it."""

    id: str
    model: str  # the model's label
    model_path: str
    model_sha256: str
    config: dict | None  # QuantConfig.to_dict(), None for the float model
    calibration: data.ImageSet | None
    evaluation: data.ImageSet
    cache_dir: str
    output: str | None = None
    ep: str = "auto"
    threads: int | None = None
    quiet: bool = False
    runtime: str = "onnxruntime"

    def describe(self) -> str:
        if self.config is None:
            return f"{self.model} float32"
        config = QuantConfig.from_dict(self.config)
        return f"{self.model} {series_label(config)}, {_group_label(config)}"


@dataclasses.dataclass
class SweepSummary:
    runs: int
    done_before: int
    ran: int = 0
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (run, message)
    outputs: list[Path] = dataclasses.field(default_factory=list)
    pending: list[str] = dataclasses.field(default_factory=list)  # dry run: runs left to do


@dataclasses.dataclass
class _Plan:
    """A spec with its models and images resolved and an id for each run."""

    spec: Spec
    ids: dict[Run, str]
    tasks: dict[str, Task]


def run_sweep(spec_paths: Sequence[str | Path], options: SweepOptions) -> SweepSummary:
    """Run every row of the specs' tables that ``OUT/results.jsonl`` lacks, then write the
    tables and plots. User mistakes raise ``OnnxqError`` before any run starts."""
    if options.jobs < 1:
        raise OnnxqError(f"--jobs must be at least 1, got {options.jobs}")
    if options.threads is not None and options.threads < 1:
        raise OnnxqError(f"--threads must be at least 1, got {options.threads}")
    if options.jobs > 1 and options.ray is not None:
        raise OnnxqError("use either --jobs (this machine) or --ray (a Ray cluster), not both")
    runtime.check_runtime(options.runtime)
    if options.runtime == "openvino":
        openvino_runtime.require_openvino()
    specs = [load_spec(path) for path in spec_paths]
    _check_names(specs)
    plans = [_plan(spec, options) for spec in specs]
    tasks = {task_id: task for plan in plans for task_id, task in plan.tasks.items()}
    results = ResultsFile(options.out / RESULTS_FILE)
    records = results.load()
    pending = [task for task_id, task in tasks.items() if task_id not in records]
    summary = SweepSummary(len(tasks), len(tasks) - len(pending))
    if options.dry_run:
        summary.pending = [task.describe() for task in pending]
        return summary
    options.out.mkdir(parents=True, exist_ok=True)
    progress.status(f"{len(tasks)} runs: {summary.done_before} done before, {len(pending)} to run")

    def finished(record: dict) -> None:
        results.append(record)
        records[record["id"]] = record
        summary.ran += 1
        line = _summary_line(tasks[record["id"]], record)
        progress.status(f"[{summary.ran}/{len(pending)}] {line}")

    try:
        with _submitter(options) as submit:
            summary.failures = _execute(_with_execution(pending, options), submit, finished)
    finally:
        for plan in plans:
            summary.outputs += write_outputs(plan, records, options.out)
    return summary


def _check_names(specs: Sequence[Spec]) -> None:
    names = [spec.name for spec in specs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise OnnxqError(
            f"two specs are named {twice[0]!r}: their tables would overwrite each other"
        )


# --- planning ---------------------------------------------------------------------------------


def _plan(spec: Spec, options: SweepOptions) -> _Plan:
    root = options.data.resolve()
    calibration, evaluation = _images(spec, root)
    files = {key: _model_file(spec, key, options.cache_dir) for key in _used_models(spec)}
    digests = {key: _file_digest(path) for key, path in files.items()}
    image_ids = {
        "calibration": _relative_names(calibration, root),
        "evaluation": _relative_names(evaluation, root),
    }
    runs = spec.runs() + [Run(model, None) for model in files]
    ids, tasks = {}, {}
    for run in dict.fromkeys(runs):
        _check_calibration_size(spec, run, len(calibration))
        # a sweep always calibrates; the record holds the config as applied
        config = run.config.resolved(calibrated=True).to_dict() if run.config else None
        identity = {
            "model": digests[run.model],
            "config": config_identity(run.config) if run.config else None,
            "calibration": image_ids["calibration"] if config else None,
            "evaluation": image_ids["evaluation"],
        }
        if options.runtime != "onnxruntime":  # ONNX Runtime's runs keep their earlier ids
            identity["runtime"] = options.runtime
        run_id = digest(identity)
        ids[run] = run_id
        tasks[run_id] = Task(
            run_id,
            spec.models[run.model].label,
            str(files[run.model]),
            digests[run.model],
            config,
            calibration if config else None,
            evaluation,
            str(options.cache_dir),
        )
    return _Plan(spec, ids, tasks)


def config_identity(config: QuantConfig) -> dict:
    """The schemes and every resolved setting that differs from ``techniques_off``.

    Run ids use this rather than the whole config, so that finished runs stay finished when
    ``QuantConfig`` gains a field whose default leaves quantization as it was, or when a default
    changes (a run is named by what it applies).
    """
    config = config.resolved(calibrated=True)
    default = techniques_off(config.weights).to_dict()
    return {
        key: value
        for key, value in config.to_dict().items()
        if key in ("weights", "features") or value != default.get(key)
    }


def _used_models(spec: Spec) -> list[str]:
    return list(dict.fromkeys(run.model for run in spec.runs()))


def _images(spec: Spec, root: Path) -> tuple[data.ImageSet, data.ImageSet]:
    settings = spec.data
    calibration_dir = (root / settings.calibration).resolve()
    evaluation_dir = (root / settings.evaluation).resolve()
    evaluation = _find_images(evaluation_dir)
    data.require_labels(evaluation, evaluation_dir)
    size = spec.calibration_size
    if calibration_dir == evaluation_dir:
        calibration, evaluation = evaluation.split(size, settings.seed)
    else:
        calibration = _find_images(calibration_dir).sample(size, settings.seed)
    evaluation = evaluation.head(settings.evaluation_limit)
    if len(evaluation) == 0:
        raise OnnxqError(
            f"{spec.path.name}: [data]: no evaluation images left in {evaluation_dir} after "
            f"holding out {size} for calibration"
        )
    return calibration, evaluation


@functools.lru_cache(maxsize=None)
def _find_images(folder: Path) -> data.ImageSet:
    return data.find_images(folder)


@functools.lru_cache(maxsize=None)
def _file_digest(path: Path) -> str:
    return file_digest(path)


def _relative_names(images: data.ImageSet, root: Path) -> list[str]:
    """Image names relative to the data root, so that a moved dataset keeps its run ids."""
    return [
        str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        for path in images.files
    ]


def _model_file(spec: Spec, key: str, cache: Path) -> Path:
    model = spec.models[key]
    if model.path is not None:
        path = model.path
    else:
        try:
            path = exported_model(
                cache / "models", model.export, model.weights, model.random_weights, model.seed
            )
        except OnnxqError as error:
            raise OnnxqError(f"{spec.path.name}: [models.{key}]: {error}") from None
    if modelio.get_preprocessing(modelio.load_model(path)) is None:
        raise OnnxqError(
            f"{spec.path.name}: [models.{key}]: {path} records no preprocessing "
            "(models written by onnxq export do)"
        )
    return path


def _check_calibration_size(spec: Spec, run: Run, available: int) -> None:
    if run.config is not None and run.config.calib_size > available:
        raise OnnxqError(
            f"{spec.path.name}: a row asks for calib_size {run.config.calib_size} but [data] "
            f"holds out {available} calibration images (raise calibration_size)"
        )


# --- execution --------------------------------------------------------------------------------


def _with_execution(tasks: list[Task], options: SweepOptions) -> list[Task]:
    """The tasks with this sweep's execution settings (where models go, EP, threads, quiet)."""
    threads = options.threads
    if options.ray is None and options.jobs > 1:
        threads = threads or max(1, (os.cpu_count() or 1) // options.jobs)
    quiet = progress.is_quiet() or options.jobs > 1 or options.ray is not None
    models = options.out / "models"
    if options.save_models:
        models.mkdir(parents=True, exist_ok=True)
    keep = options.save_models
    return [
        dataclasses.replace(
            task,
            output=str(models / f"{task.id[:16]}.onnx") if keep and task.config else None,
            ep=options.ep,
            threads=threads,
            quiet=quiet,
            runtime=options.runtime,
        )
        for task in tasks
    ]


def _execute(
    tasks: list[Task], submit: Callable[[Task], Future], finished: Callable[[dict], None]
) -> list[tuple[str, str]]:
    """Run the tasks, calling ``finished`` with each record as it arrives.

    Runs that would share a calibration wait for the first of them, which fills the cache.
    Returns the failed runs with their error's first line.
    """
    followers: dict[str, list[Task]] = {}
    first: list[Task] = []
    for task in tasks:
        group = _calibration_group(task)
        if group in followers:
            followers[group].append(task)
        else:
            followers[group] = []
            first.append(task)
    running = {submit(task): task for task in first}
    failures = []
    while running:
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in [future for future in running if future in done]:  # in submission order
            task = running.pop(future)
            try:
                finished(future.result())
            except Exception as error:  # a failed run must not stop the others
                error = getattr(error, "cause", None) or error  # Ray wraps a task's exception
                message = (str(error).strip().splitlines() or [type(error).__name__])[0]
                progress.status(f"[red]failed:[/] {task.describe()}: {message}")
                failures.append((task.describe(), message))
            for follower in followers.pop(_calibration_group(task), []):
                running[submit(follower)] = follower
    return failures


def _calibration_group(task: Task) -> str:
    if task.config is None:
        return task.id
    identity = config_identity(QuantConfig.from_dict(task.config))
    upstream = {k: v for k, v in identity.items() if k not in _AFTER_CALIBRATION}
    return digest([task.model_sha256, upstream, [str(f) for f in task.calibration.files]])


@contextlib.contextmanager
def _submitter(options: SweepOptions) -> Iterator[Callable[[Task], Future]]:
    """A function that starts a task and returns its future: inline, in processes, or on Ray."""
    if options.ray is not None:
        with _ray_submitter(options) as submit:
            yield submit
    elif options.jobs > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(options.jobs, mp_context=context) as pool:
            yield functools.partial(pool.submit, execute)
    else:
        yield _run_inline


def _run_inline(task: Task) -> Future:
    future: Future = Future()
    try:
        future.set_result(execute(task))
    except Exception as error:
        future.set_exception(error)
    return future


@contextlib.contextmanager
def _ray_submitter(options: SweepOptions) -> Iterator[Callable[[Task], Future]]:
    try:
        import ray
    except ImportError:
        raise OnnxqError("--ray needs Ray: pip install 'onnxq[ray]'") from None
    started = not ray.is_initialized()
    if started:
        address = None if options.ray == RAY_DEFAULT_ADDRESS else options.ray
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise OnnxqError(f"cannot start or reach Ray at {options.ray}: {error}") from None
    try:
        threads = options.threads or _ray_threads(ray)
        gpus = 1 if ray.cluster_resources().get("GPU", 0) else 0
        remote = ray.remote(execute).options(num_cpus=threads, num_gpus=gpus)
        yield lambda task: remote.remote(dataclasses.replace(task, threads=threads)).future()
    finally:
        if started:
            ray.shutdown()


def _ray_threads(ray) -> int:
    """CPUs per Ray task: 4, or the most any node has if that is fewer."""
    cpus = [node["Resources"].get("CPU", 1) for node in ray.nodes() if node["Alive"]]
    largest = max(cpus, default=1)
    return int(max(1, min(4, largest)))


def execute(task: Task) -> dict:
    """Quantize (unless float) and evaluate one run; returns its results record."""
    progress.set_quiet(task.quiet)
    runtime.set_threads(task.threads)
    start = time.perf_counter()
    if task.config is None:
        model = modelio.load_model(task.model_path)
        preprocessing = modelio.get_preprocessing(model)
        result = evaluate.evaluate(
            model, task.evaluation, preprocessing, ep=task.ep, runtime_name=task.runtime
        )
        wbit, calibration, quantize_seconds, calibration_images = 32.0, None, 0.0, 0
    else:
        cache = CalibrationCache(Path(task.cache_dir) / "calibration")
        row = run_row(
            task.model_path, QuantConfig.from_dict(task.config), task.calibration, task.evaluation,
            task.output, task.ep, calibration_cache=cache, runtime_name=task.runtime,
        )
        result, quantize_seconds = row.result, row.quantize_seconds
        wbit = equivalent_wbit(row.quantized.model)
        calibration = "cached" if cache.hits else "computed" if cache.misses else None
        calibration_images = row.quantized.calibration_images
    total = time.perf_counter() - start
    return {
        "id": task.id,
        "model": task.model,
        "model_sha256": task.model_sha256,
        "config": task.config,
        "top1": result.top1,
        "top5": result.top5,
        "equivalent_wbit": wbit,
        "images": result.images,
        "calibration_images": calibration_images,
        "calibration": calibration,
        "predictions_sha256": hashlib.sha256(json.dumps(result.predictions).encode()).hexdigest(),
        "seconds": {
            "quantize": round(quantize_seconds, 3),
            "evaluate": round(total - quantize_seconds, 3),
            "total": round(total, 3),
        },
        "images_per_second": round(result.images_per_second, 2),
        "provider": result.provider,
        "host": platform.node(),
        "versions": versions(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def versions() -> dict[str, str]:
    """The versions that produced a result."""
    import numpy
    import onnx
    import onnxruntime

    return {
        "onnxq": __version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _summary_line(task: Task, record: dict) -> str:
    calibration = f", calibration {record['calibration']}" if record["calibration"] else ""
    return (
        f"{task.describe()}: top-1 {record['top1']:.3f}  top-5 {record['top5']:.3f}  "
        f"({record['seconds']['total']:.0f} s{calibration})"
    )


class ResultsFile:
    """``results.jsonl``: one JSON record per finished run, appended as runs finish."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, dict]:
        """The records by run id; a line cut short by an interrupted write is dropped."""
        if not self.path.exists():
            return {}
        text = self.path.read_text()
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
            write_atomically(self.path, lambda file: file.write(text.encode()))
        records = {}
        for number, line in enumerate(text.splitlines(), 1):
            try:
                record = json.loads(line)
                records[record["id"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                raise OnnxqError(f"{self.path}:{number}: not a results record") from None
        return records

    def append(self, record: dict) -> None:
        with open(self.path, "a") as file:
            file.write(json.dumps(record, sort_keys=True) + "\n")


# --- tables and plots -------------------------------------------------------------------------


def write_outputs(plan: _Plan, records: dict[str, dict], out: Path) -> list[Path]:
    """``OUT/<spec>.md`` with every table, and one plot per table: the paths written."""
    spec = plan.spec
    groups = _table_groups(spec.tables)
    lines = [f"# {spec.title}", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += [_provenance(plan, records), ""]
    written = []
    for number, group in enumerate(groups, 1):
        if group[0].title:
            lines += [f"## {group[0].title}", ""]
        missing = 0
        for table in group:
            rows = [_table_row(plan, row, records, table.reference_style) for row in table.rows]
            missing += rows.count(None)
            shown = [row for row in rows if row is not None]
            lines += [markdown_table(shown, table.columns, header=not table.continues), ""]
        if missing:
            lines += [f"_{missing} rows not shown: their runs failed or have not run yet._", ""]
        png = out / (f"{spec.name}.png" if len(groups) == 1 else f"{spec.name}-{number}.png")
        if _plot(plan, group, records, png):
            lines += [f"![top-1 against equivalent weight bits]({png.name})", ""]
            written.append(png)
    markdown = out / f"{spec.name}.md"
    write_atomically(markdown, lambda file: file.write("\n".join(lines).rstrip().encode() + b"\n"))
    return [markdown, *written]


def _table_groups(tables: Sequence[Table]) -> list[list[Table]]:
    """Tables with the blocks that continue them."""
    groups: list[list[Table]] = []
    for table in tables:
        if table.continues:
            groups[-1].append(table)
        else:
            groups.append([table])
    return groups


def _provenance(plan: _Plan, records: dict[str, dict]) -> str:
    done = [records[task_id] for task_id in plan.tasks if task_id in records]
    quantized = [r for r in done if r["config"]]
    evaluated = sorted({r["images"] for r in done})
    calibrated = sorted({r["calibration_images"] for r in quantized if r["calibration_images"]})
    providers = sorted({r["provider"] for r in done})
    onnxruntime = sorted({r["versions"]["onnxruntime"] for r in done})
    return (
        f"_`onnxq sweep {plan.spec.path.name}`: evaluated on {_join(evaluated)} images, "
        f"calibrated on {_join(calibrated) or '-'}; {_join(providers)}, onnxruntime "
        f"{_join(onnxruntime)}, onnxq {__version__}._"
    )


def _join(values: Sequence) -> str:
    return "/".join(str(value) for value in values)


def _table_row(plan: _Plan, row: TableRow, records: dict[str, dict], style: str) -> Row | None:
    record = records.get(plan.ids[row.run])
    if record is None:
        return None
    label = plan.spec.models[row.run.model].label
    if row.run.config is None:
        return Row(label, "float32", "float32", " /", "/", record["top1"], record["top5"],
                   row.remark, wbit=32.0)
    reference = records.get(plan.ids[row.reference]) if row.reference else None
    if reference is not None:
        # bits are compared between quantized models only: "4.06(-27.94)" says nothing
        bits = reference["equivalent_wbit"] if reference["config"] else None
        reference = Reference(reference["top1"], reference["top5"], bits, style)
    result = EvalResult(record["images"], record["top1"], record["top5"], 0.0, record["provider"])
    return Row.from_config(
        label, row.run.config, result, row.remark, record["equivalent_wbit"], reference
    )


def _plot(plan: _Plan, group: list[Table], records: dict[str, dict], path: Path) -> bool:
    """Plot the group's quantized rows and references that have equivalent bits; False when
    there are none."""
    series_of: dict[Run, str | None] = {}  # each run once, with its row's series if it has one
    for row in (row for table in group for row in table.rows):
        for run, series in ((row.run, row.series), (row.reference, None)):
            if run is not None and run.config is not None:
                series_of[run] = series_of.get(run) or series
    several_models = len({run.model for run in series_of}) > 1
    points = []
    for run, series in series_of.items():
        record = records.get(plan.ids[run])
        if record is None or record["equivalent_wbit"] is None:
            continue
        series = series or series_label(run.config)
        if several_models:
            series = f"{plan.spec.models[run.model].label}: {series}"
        bits, top1 = record["equivalent_wbit"], record["top1"]
        points.append(Point(series, bits, top1, _group_label(run.config)))
    if not points:
        return False
    float_top1 = {
        plan.spec.models[model].label: records[plan.ids[Run(model, None)]]["top1"]
        for model in dict.fromkeys(run.model for run in series_of)
        if plan.ids[Run(model, None)] in records
    }
    plot_accuracy_vs_bits(points, float_top1, group[0].title or plan.spec.title, path)
    return True


def _group_label(config: QuantConfig) -> str:
    weights = config.weights
    if weights.granularity is Granularity.GROUP:
        return f"gs{weights.group_size}"
    return "pc" if weights.granularity is Granularity.CHANNEL else "pt"


def series_label(config: QuantConfig) -> str:
    """A plot line's name: everything about a config except the weights' granularity."""
    weights, features = config.weights, config.features
    kind = "symmetric" if weights.symmetric else "affine"
    parts = [f"W{weights.bits}A{features.bits if features else 32} {kind}"]
    if weights.observer is not Observer.MINMAX:
        parts.append(f"w {weights.observer.value}")
    if features is not None:
        if features.observer is not Observer.MINMAX:
            parts.append(f"f {features.observer.value}")
        if features.granularity is not Granularity.TENSOR or features.symmetric:
            group = f" {features.group_size}" if features.group_size else ""
            parts.append(f"f {features.name}{group}")
    default = techniques_off(weights, features).to_dict()
    for key, value in config.resolved(calibrated=True).to_dict().items():
        if key not in ("weights", "features", "calib_size", "seed") and value != default.get(key):
            shown = ",".join(map(str, value)) if isinstance(value, list) else value
            parts.append(f"{key}={shown}")
    return ", ".join(parts)
