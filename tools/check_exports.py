"""Export every model ``onnxq export --list`` offers and record whether its check passes.

Each name runs ``onnxq export NAME --random-weights`` in a fresh process (with a time limit);
the export compares ONNX Runtime with torch on random images before it writes anything. Prints
a markdown table of name, result, seconds and max |onnx − torch|::

    python tools/check_exports.py [--timeout 900] [--only NAME ...] > exports.md
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def model_names() -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "onnxq", "export", "--list"], capture_output=True, text=True,
        check=True,
    )
    return result.stdout.split()


def check(name: str, timeout: float) -> tuple[str, float, str]:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "onnxq", "-q", "export", name, "--random-weights",
                   "-o", str(Path(folder) / f"{name}.onnx")]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout", time.perf_counter() - start, ""
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["(no message)"]
        return f"failed: {lines[-1][:160]}", seconds, ""
    match = re.search(r"max \|onnx - torch\| = (\S+)\)", result.stdout)
    return "ok", seconds, match.group(1) if match else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    names = args.only or model_names()
    print("| model | export and check | seconds | max \\|onnx − torch\\| |")
    print("|---|---|---|---|")
    for name in names:
        status, seconds, difference = check(name, args.timeout)
        print(f"| {name} | {status} | {seconds:.0f} | {difference} |", flush=True)


if __name__ == "__main__":
    main()
