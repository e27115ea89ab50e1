"""The CUDA execution provider against the CPU one: same quantized models, same images.

Needs onnxruntime-gpu (``pip uninstall onnxruntime; pip install 'onnxruntime-gpu[cuda,cudnn]'``)
and a GPU. The float model (EfficientNet-Lite0 by default, exported if missing) is quantized
with the demo's configurations plus W8A8 in the fused placement, calibrating on the CUDA EP
(128 images of a seeded split). Each model is then evaluated on the other images on both EPs,
and the script reports:

* top-1 on each EP and how often the two EPs predict the same class;
* images/s on each EP at one batch size, inference only (a decoded batch run ``--runs`` times
  after ``--warmup`` runs), and the CUDA/CPU ratio;
* under the CUDA EP, how many nodes ONNX Runtime ran on CUDA and which op types it left on the
  CPU (from its profiler).

CUDA sessions fold the constant weight DequantizeLinear nodes at load (see
``onnxq.io.runtime.FOLD_WEIGHTS_AT_LOAD``), so the node counts are those of the folded graph.

Prints markdown for BENCHMARKS.md and writes the numbers to WORKDIR/cuda.json.

    python tools/bench_cuda.py [--data ../shared/data/imagenet-sample] [--model M.onnx]
        [--workdir artifacts/bench_cuda] [--batch 64]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime

from onnxq.base import progress
from onnxq.core.config import QuantConfig
from onnxq.experiments import demo
from onnxq.io import data, runtime
from onnxq.pipeline import modelio
from onnxq.pipeline.quantize import quantize_file
from onnxq.reporting import evaluate

REPO = Path(__file__).resolve().parent.parent
CALIBRATION_IMAGES = 128


def configurations() -> list[tuple[str, QuantConfig | None]]:
    """fp32, the demo's models, and W8A8 in the placement ORT fuses into integer kernels."""
    rows: list[tuple[str, QuantConfig | None]] = [("fp32", None)]
    for tag, config, _ in demo.CONFIGS:
        rows.append((tag, config))
        if tag == "w8a8":
            rows.append(("w8a8_fused", dataclasses.replace(config, placement="fused")))
    return rows


def throughput(path: Path, pixels: np.ndarray, ep: str, warmup: int, runs: int) -> float:
    """Images per second of ``runs`` runs on one batch, after ``warmup`` runs."""
    session = runtime.create_session(str(path), ep)
    feed = {session.get_inputs()[0].name: pixels}
    for _ in range(warmup):
        session.run(None, feed)
    start = time.perf_counter()
    for _ in range(runs):
        session.run(None, feed)
    return runs * len(pixels) / (time.perf_counter() - start)


def node_placement(path: Path, pixels: np.ndarray) -> tuple[int, int, dict[str, int], list[str]]:
    """Under the CUDA EP: nodes on CUDA, all nodes, the op types run on the CPU (counts) and
    a few of those nodes' names."""
    options = onnxruntime.SessionOptions()
    for key, value in runtime.FOLD_WEIGHTS_AT_LOAD.items():  # as runtime.create_session on CUDA
        options.add_session_config_entry(key, value)
    options.enable_profiling = True
    options.log_severity_level = 3
    options.profile_file_prefix = str(path.with_suffix(""))
    session = onnxruntime.InferenceSession(str(path), options, providers=runtime.providers("cuda"))
    session.run(None, {session.get_inputs()[0].name: pixels})
    events = json.loads(Path(session.end_profiling()).read_text())
    providers = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and "provider" in args:
            providers[event["name"].removesuffix("_kernel_time")] = (args["op_name"], args["provider"])
    on_cpu = collections.Counter(op for op, provider in providers.values() if provider != runtime.CUDA)
    on_cuda = sum(provider == runtime.CUDA for _, provider in providers.values())
    examples = [name for name, (_, provider) in providers.items() if provider != runtime.CUDA][:4]
    return on_cuda, len(providers), dict(on_cpu), examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/imagenet-sample")
    parser.add_argument("--model", type=Path, help="float ONNX model (default: export EfficientNet-Lite0)")
    parser.add_argument("--workdir", type=Path, default=REPO / "artifacts/bench_cuda")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    progress.set_quiet(True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    float_path = args.model or args.workdir / f"{demo.MODEL}.onnx"
    if not float_path.exists():
        from onnxq.models.export import export_model

        export_model(demo.MODEL, float_path)
    preprocessing = modelio.get_preprocessing(modelio.load_model(float_path))
    calibration, evaluation = data.find_images(args.data).split(CALIBRATION_IMAGES, seed=0)
    pixels, _ = next(data.iter_batches(evaluation, preprocessing, args.batch))
    print(f"onnxruntime {onnxruntime.__version__}, providers {onnxruntime.get_available_providers()}, "
          f"{platform.processor() or platform.machine()}", flush=True)

    records = []
    for tag, config in configurations():
        path = float_path
        seconds = 0.0
        if config is not None:
            path = args.workdir / f"{tag}.onnx"
            start = time.perf_counter()
            quantize_file(float_path, path, config, calibration, preprocessing, ep="cuda")
            seconds = time.perf_counter() - start
        cuda = evaluate.evaluate(str(path), evaluation, preprocessing, ep="cuda")
        cpu = evaluate.evaluate(str(path), evaluation, preprocessing, ep="cpu")
        on_cuda, nodes, on_cpu, cpu_examples = node_placement(path, pixels)
        record = {
            "model": tag,
            "quantize_seconds_cuda_calibration": round(seconds, 1),
            "provider": cuda.provider,
            "top1_cuda": cuda.top1,
            "top1_cpu": cpu.top1,
            "agreement": cuda.agreement(cpu),
            "images_per_second_cuda": throughput(path, pixels, "cuda", args.warmup, args.runs),
            "images_per_second_cpu": throughput(path, pixels, "cpu", 2, max(3, args.runs // 10)),
            "nodes_on_cuda": on_cuda,
            "nodes": nodes,
            "cpu_op_types": on_cpu,
            "cpu_node_examples": cpu_examples,
        }
        records.append(record)
        print(json.dumps(record), flush=True)

    (args.workdir / "cuda.json").write_text(json.dumps(records, indent=1) + "\n")
    print(f"\n{len(calibration)} calibration / {len(evaluation)} evaluation images, batch {args.batch}\n")
    print("|model|top-1 CUDA|top-1 CPU|same class|images/s CUDA|images/s CPU|CUDA/CPU|nodes on CUDA|on CPU|quantize s|")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        cpu_ops = ", ".join(f"{op} {n}" for op, n in sorted(r["cpu_op_types"].items())) or "none"
        print(f"|{r['model']}|{r['top1_cuda']:.2f}|{r['top1_cpu']:.2f}|{r['agreement']:.1f}%|"
              f"{r['images_per_second_cuda']:.0f}|{r['images_per_second_cpu']:.0f}|"
              f"{r['images_per_second_cuda'] / r['images_per_second_cpu']:.1f}×|"
              f"{r['nodes_on_cuda']}/{r['nodes']}|{cpu_ops}|{r['quantize_seconds_cuda_calibration']}|")


if __name__ == "__main__":
    main()
