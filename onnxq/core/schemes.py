"""Quantization schemes: granularity × (affine | symmetric) × bit width, parsed from the CLI."""

from __future__ import annotations

import dataclasses
import enum

from onnxq.base.errors import OnnxqError


class Granularity(str, enum.Enum):
    """How many values share one scale."""

    TENSOR = "tensor"
    CHANNEL = "channel"
    GROUP = "group"


class Observer(str, enum.Enum):
    """How a clipping range is chosen from data."""

    MINMAX = "minmax"
    MSE = "mse"
    PERCENTILE = "percentile"


MIN_BITS, MAX_BITS = 2, 8
#: Symmetric grids: ``restricted`` codes ``±(2^(b−1)−1)`` with ``scale = absmax/(2^(b−1)−1)``, so
#: both extremes are representable (ONNX Runtime's int8 weights, PyTorch's qnnpack/x86 weight
#: observers); ``full`` codes ``[−2^(b−1), 2^(b−1)−1]`` with ``scale = 2·absmax/(2^b−1)``, which
#: clips the positive extreme by half a step (ONNX Runtime's int4 weights, torch's default qint8).
SYMMETRIC_RANGES = ("restricted", "full")


@dataclasses.dataclass(frozen=True)
class Scheme:
    """One quantization scheme, e.g. ``Scheme.parse("per-group-affine", bits=4, group_size=8)``.

    For weights a channel is an output channel and a group is ``group_size`` input channels of
    one output channel (times the whole kernel). For features (activations) a channel is axis 1
    and a group is ``group_size`` consecutive channels sharing one scale.
    """

    bits: int
    granularity: Granularity = Granularity.TENSOR
    symmetric: bool = False
    group_size: int | None = None
    observer: Observer = Observer.MINMAX
    percentile: float = 99.99
    symmetric_range: str = "restricted"

    def __post_init__(self) -> None:
        if self.symmetric_range not in SYMMETRIC_RANGES:
            raise OnnxqError(
                f"unknown symmetric range {self.symmetric_range!r} "
                f"(choose from {', '.join(SYMMETRIC_RANGES)})"
            )
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise OnnxqError(f"bit width {self.bits} is not supported (use {MIN_BITS}..{MAX_BITS})")
        if self.granularity is Granularity.GROUP:
            if self.group_size is None:
                raise OnnxqError("a per-group scheme needs a group size (--gs N)")
            if self.group_size < 1:
                raise OnnxqError(f"group size must be a positive integer, got {self.group_size}")
        elif self.group_size is not None:
            raise OnnxqError(
                f"a group size only applies to per-group schemes, not per-{self.granularity.value}"
            )

    @property
    def name(self) -> str:
        """The scheme's CLI name, e.g. ``per-group-affine``."""
        kind = "symmetric" if self.symmetric else "affine"
        return f"per-{self.granularity.value}-{kind}"

    @property
    def signed(self) -> bool:
        """Symmetric schemes store signed integers with a zero point of 0; affine ones unsigned."""
        return self.symmetric

    @property
    def restricted(self) -> bool:
        """Symmetric codes limited to ``±(2^(b−1)−1)`` (see ``SYMMETRIC_RANGES``)."""
        return self.symmetric and self.symmetric_range == "restricted"

    def describe(self) -> str:
        """A short human-readable label, e.g. ``4-bit per-group-affine gs=8 (mse)``."""
        gs = f" gs={self.group_size}" if self.group_size else ""
        grid = " full-range" if self.symmetric and not self.restricted else ""
        return f"{self.bits}-bit {self.name}{gs}{grid} ({self.observer.value})"

    def to_dict(self) -> dict:
        return {
            "bits": self.bits,
            "scheme": self.name,
            "group_size": self.group_size,
            "observer": self.observer.value,
            **({"percentile": self.percentile} if self.observer is Observer.PERCENTILE else {}),
            **({"symmetric_range": self.symmetric_range} if self.symmetric else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Scheme:
        return cls.parse(
            data["scheme"],
            bits=data["bits"],
            group_size=data.get("group_size"),
            observer=data.get("observer", "minmax"),
            percentile=data.get("percentile", 99.99),
            symmetric_range=data.get("symmetric_range", "restricted"),
        )

    @classmethod
    def parse(
        cls,
        name: str,
        *,
        bits: int,
        group_size: int | None = None,
        observer: str | Observer = Observer.MINMAX,
        percentile: float = 99.99,
        symmetric_range: str = "restricted",
    ) -> Scheme:
        """Parse ``per-{tensor,channel,group}-{affine,symmetric}``."""
        parts = name.strip().lower().split("-")
        choices = ", ".join(scheme_names())
        if len(parts) != 3 or parts[0] != "per" or parts[2] not in ("affine", "symmetric"):
            raise OnnxqError(f"unknown scheme {name!r} (choose from {choices})")
        try:
            granularity = Granularity(parts[1])
        except ValueError:
            raise OnnxqError(f"unknown scheme {name!r} (choose from {choices})") from None
        try:
            observer = Observer(observer)
        except ValueError:
            options = ", ".join(o.value for o in Observer)
            raise OnnxqError(f"unknown observer {observer!r} (choose from {options})") from None
        if not 50.0 < percentile <= 100.0:
            raise OnnxqError(f"percentile must be in (50, 100], got {percentile}")
        return cls(
            bits=bits,
            granularity=granularity,
            symmetric=parts[2] == "symmetric",
            group_size=group_size,
            observer=observer,
            percentile=percentile,
            symmetric_range=symmetric_range,
        )


def reduced_range(scheme: Scheme) -> Scheme:
    """An 8-bit symmetric weight scheme at 7 bits (int8 codes within ±63 or −64..63), which
    ONNX Runtime's u8×s8 kernels multiply without saturating on any x86 CPU; others unchanged."""
    if scheme.symmetric and scheme.bits == 8:
        return dataclasses.replace(scheme, bits=7)
    return scheme


def scheme_names() -> list[str]:
    """All scheme names the CLI accepts."""
    return [f"per-{g.value}-{k}" for g in Granularity for k in ("affine", "symmetric")]


def feature_observer(name: str, bits: int) -> str:
    """A feature observer by name, where ``auto`` is ``mse`` under 8 bits (min/max spends most
    of a coarse grid on a feature's rare extremes: W4A4 EfficientNet-Lite0 with GPTQ, 62.8 % top-1
    with min/max ranges, 75.4 % with MSE ones) and ``minmax`` at 8 bits."""
    if name == "auto":
        return Observer.MSE.value if bits < 8 else Observer.MINMAX.value
    known = [observer.value for observer in Observer]
    if name not in known:
        raise OnnxqError(f"unknown feature observer {name!r} (choose from {', '.join(known)}, auto)")
    return name
