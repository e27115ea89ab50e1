"""Facts about the machine onnxq runs on that change what it should write."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

#: x86 instruction sets with a non-saturating u8×s8 dot product (``/proc/cpuinfo`` flag names).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: The most a reduced-range int8 weight code may be: ``2 · 255 · 64`` still fits int16.
NON_SATURATING_CODE = 64
#: Environment variable that overrides the CPU check: ``1`` (saturating) or ``0``.
SATURATES_VARIABLE = "ONNXQ_INT8_SATURATES"


@functools.cache
def int8_kernels_saturate() -> bool:
    """ONNX Runtime's u8×s8 CPU kernels can saturate on this machine.

    On x86 CPUs without VNNI (AVX2 machines: AMD Zen 1–3, Intel before Cascade Lake) ONNX
    Runtime multiplies uint8 activations by int8 weights with ``VPMADDUBSW``, which adds each
    pair of products into a saturating int16: with weight codes beyond ±64 the sums of large
    activations clip, and an int8 model loses accuracy there (EfficientNet-Lite0 W8A8: 88.6 →
    83.0 top-1). Other CPUs (VNNI, ARM) accumulate in int32. Read from ``/proc/cpuinfo``; where
    the flags cannot be read the answer is False. ``ONNXQ_INT8_SATURATES=1`` (or ``0``) says it
    instead, e.g. to run the test suite as on such a machine.
    """
    override = os.environ.get(SATURATES_VARIABLE)
    if override in ("0", "1"):
        return override == "1"
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    flags = cpu_flags()
    return bool(flags) and not flags.intersection(VNNI_FLAGS)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The instruction-set flags of the first processor in ``cpuinfo`` (empty if unreadable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()
