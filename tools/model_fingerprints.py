"""SHA-256 of the models a fixed set of command lines writes, to show that a refactoring keeps them.

Runs ``onnxq quantize`` (and ``onnxq deploy``) through the command line for one configuration
per scheme family and technique on EfficientNet-Lite0 with real calibration images, and writes
``{config: sha256}`` as JSON. Run it before and after a change and compare::

    python tools/model_fingerprints.py --out before.json
    ... change ...
    python tools/model_fingerprints.py --out after.json --compare before.json

The command lines go through the CLI on purpose: they stay valid when modules move.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("fingerprints")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
IMAGES = SHARED / "imagenet-sample"

#: name → extra ``onnxq quantize`` arguments (every run: 16 calibration images).
CONFIGS: dict[str, list[str]] = {
    "w8a8-default": [],
    "w8a8-inputs": ["--f-placement", "inputs"],
    "w8-per-tensor-symmetric-weight-only": ["--scheme", "per-tensor-symmetric", "--weight-only"],
    "w8-symmetric-full-range": ["--symmetric-range", "full"],
    "w4a8-per-channel-affine-gptq": ["--wbits", "4", "--scheme", "per-channel-affine"],
    "w4a8-per-group-affine-gs8-nearest": [
        "--wbits", "4", "--scheme", "per-group-affine", "--gs", "8", "--rounding", "nearest",
    ],
    "w4a8-per-group-symmetric-gs32-mse": [
        "--wbits", "4", "--scheme", "per-group-symmetric", "--gs", "32", "--observer", "mse",
        "--rounding", "nearest",
    ],
    "w4a4-per-group-affine-gs8-fgroup-keep8": [
        "--wbits", "4", "--fbits", "4", "--scheme", "per-group-affine", "--gs", "8",
        "--f-scheme", "per-group-affine", "--f-gs", "8", "--keep-8bit", "first,last",
        "--rounding", "nearest",
    ],
    "w4a8-gs8-smooth": [
        "--wbits", "4", "--scheme", "per-group-affine", "--gs", "8", "--smooth", "--alpha", "0.5",
        "--rounding", "nearest",
    ],
    "w4a8-gs32-reorder-auto-verify": [
        "--wbits", "4", "--scheme", "per-group-affine", "--gs", "32", "--reorder", "auto",
        "--verify", "--rounding", "nearest",
    ],
    "w4a8-gs8-decompose-nearest": [
        "--wbits", "4", "--scheme", "per-group-affine", "--gs", "8", "--decompose-scales",
        "--rounding", "nearest",
    ],
    "w4a8-gs8-decompose-gptq": [
        "--wbits", "4", "--scheme", "per-group-affine", "--gs", "8", "--decompose-scales",
    ],
    "w4a8-gs8-gptq-smooth-auto": [
        "--wbits", "4", "--scheme", "per-group-affine", "--gs", "8", "--smooth",
    ],
    "w6a6-per-channel-symmetric-percentile": [
        "--wbits", "6", "--fbits", "6", "--f-observer", "percentile",
    ],
}
#: deployed forms: name → (quantized config it starts from, extra ``onnxq deploy`` arguments).
DEPLOYS: dict[str, tuple[str, list[str]]] = {
    "deploy-w8a8": ("w8a8-default", []),
    "deploy-w4a8-fold-weights": ("w4a8-per-group-affine-gs8-nearest", ["--fold-weights"]),
}


def onnxq(*args: str) -> None:
    """Run the ``onnxq`` command line of this interpreter; raise on failure."""
    command = [sys.executable, "-m", "onnxq", "--quiet", *args]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {completed.stderr.strip()}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprints(model: Path, work: Path, names: list[str]) -> dict[str, str]:
    """The SHA-256 of every model the chosen configurations write."""
    result: dict[str, str] = {}
    for name in names:
        start = time.perf_counter()
        if name in CONFIGS:
            output = work / f"{name}.onnx"
            onnxq(
                "quantize", str(model), "-o", str(output), "--calib", str(IMAGES),
                "--calib-size", "16", *CONFIGS[name],
            )
        else:
            source, extra = DEPLOYS[name]
            output = work / f"{name}.onnx"
            onnxq("deploy", str(work / f"{source}.onnx"), "-o", str(output), *extra)
        result[name] = sha256(output)
        log.info("%-42s %s  %5.1f s", name, result[name][:16], time.perf_counter() - start)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("/tmp/onnxq-bench/efficientnet_lite0.onnx"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", type=Path, help="Earlier output to compare with.")
    parser.add_argument("--only", nargs="*", help="Configuration names to run (default: all).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.model.exists():
        args.model.parent.mkdir(parents=True, exist_ok=True)
        onnxq("export", "efficientnet_lite0", "-o", str(args.model))
    names = args.only or [*CONFIGS, *DEPLOYS]
    with tempfile.TemporaryDirectory() as work:
        result = fingerprints(args.model, Path(work), names)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.compare:
        before = json.loads(args.compare.read_text())
        changed = [name for name in result if before.get(name) != result[name]]
        log.info("%d of %d models byte-identical", len(result) - len(changed), len(result))
        for name in changed:
            log.info("changed: %s", name)
        sys.exit(1 if changed else 0)


if __name__ == "__main__":
    main()
