"""The classes of failure onnxq reports as one line: what the user can act on, from any layer.

``user_message`` turns an exception of an expected class into that line, or returns None for
an unexpected one (a bug), which the command line reports with ``unexpected``:

* ``OnnxqError``: onnxq's own checks (files, flags, models, images, specs);
* ``OSError``: the operating system refused a read or write (missing file, permission, full disk);
* ``onnx`` checker and shape-inference errors: the model is not valid ONNX;
* ONNX Runtime errors: the runtime could not load or run the model;
* ``numpy.linalg.LinAlgError`` and ``FloatingPointError``: a numerical failure (GPTQ, observers);
* ``MemoryError``: out of memory.
"""

from __future__ import annotations

import numpy as np

from onnxq.base.errors import OnnxqError


def user_message(error: BaseException) -> str | None:
    """The one line to print for ``error``, or None when it is not an expected failure.

    A failure inside a graph pass reaches here wrapped by onnx-ir's pass manager: its cause is
    what the user is told about.
    """
    cause = error.__cause__
    if cause is not None and type(error).__module__.startswith("onnx_ir"):
        return user_message(cause) or f"{_first_line(error)}: {unexpected(cause)}"
    if isinstance(error, OnnxqError):
        return str(error)
    if isinstance(error, OSError):
        return _os_message(error)
    if isinstance(error, MemoryError):
        return "out of memory (try a smaller --batch-size or --calib-size)"
    if isinstance(error, (np.linalg.LinAlgError, FloatingPointError)):
        return f"numerical failure: {_first_line(error)}"
    module = type(error).__module__ or ""
    if module.startswith("onnx.") or module.startswith("onnx_ir"):
        return f"invalid ONNX model: {_first_line(error)}"
    if module.startswith("onnxruntime"):
        return f"ONNX Runtime: {_first_line(error)}"
    return None


def unexpected(error: BaseException) -> str:
    """One line for a failure onnxq did not expect."""
    return f"unexpected {type(error).__name__}: {_first_line(error)}"


def _os_message(error: OSError) -> str:
    reason = error.strerror or _first_line(error)
    return f"{error.filename}: {reason}" if error.filename else reason


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__
