"""The ``onnxq`` command's entry point: Ctrl-C while the command line loads is an interruption
like any other (``onnxq: interrupted``, exit 130), not a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from onnxq.cli import main as run
    except KeyboardInterrupt:
        print("onnxq: interrupted", file=sys.stderr)
        sys.exit(130)
    run()
