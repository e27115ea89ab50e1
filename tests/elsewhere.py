"""Models from elsewhere, generated at test time: the model-zoo files the ``onnx`` wheel ships
(``backend/test/data/light``: opset 9, batch 1, weights computed by ConstantOfShape, weights
listed as graph inputs) and torchvision classifiers exported by plain ``torch.onnx.export``
(TorchScript exporter, no constant folding, Identity-fed BatchNorm, fixed batch 1 or dynamic).

``tools/bench_elsewhere.py`` measures the same corpus.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import warnings
from pathlib import Path

import onnx

from onnxq.analysis.constant_dq import weight_dequantize

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@dataclasses.dataclass(frozen=True)
class Source:
    """One corpus model: ``name`` (file stem), where it comes from and how to make it."""

    name: str
    source: str
    opset: int
    builder: str | None = None  # a torchvision name or efficientnet_lite0; None: light_*
    fixed_batch: bool = True
    preprocess: str | None = None  # the --preprocess the model needs (it records none)

    def path(self, folder: Path) -> Path:
        """The model file, generated into ``folder`` on the first request."""
        if self.builder is None:
            return LIGHT_DIR / f"{self.name}.onnx"
        path = folder / f"{self.name}.onnx"
        if not path.exists():
            export_plain(self.builder, path, self.opset, self.fixed_batch)
        return path


def light_sources() -> list[Source]:
    return [
        Source(path.stem, "onnx wheel (model zoo, light)", 9)
        for path in sorted(LIGHT_DIR.glob("light_*.onnx"))
    ]


def torch_sources() -> list[Source]:
    sources = []
    for model in ("resnet18", "mobilenet_v3_small"):
        for opset in (13, 17):
            for fixed in (True, False):
                batch = "b1" if fixed else "dynamic"
                sources.append(
                    Source(f"{model}_opset{opset}_{batch}", "torch.onnx.export (TorchScript, "
                           "no constant folding), random weights", opset, model, fixed)
                )
    sources.append(Source("convnext_tiny_opset17_b1", "torch.onnx.export (TorchScript, no "
                          "constant folding), random weights", 17, "convnext_tiny", True))
    sources.append(Source("efficientnet_lite0_opset13_b1", "torch.onnx.export (TorchScript, no "
                          "constant folding), real ImageNet weights", 13, "efficientnet_lite0",
                          True, "efficientnet-lite"))
    return sources


def export_plain(name: str, path: Path, opset: int, fixed_batch: bool) -> None:
    """``torchvision.models.<name>`` with seeded random weights (EfficientNet-Lite0: its real
    weights), exported as a user would."""
    import torch
    import torchvision

    torch.manual_seed(0)
    if name == "efficientnet_lite0":
        from onnxq.models import efficientnet_lite

        module = efficientnet_lite.build(name, None, False)[0].eval()
    else:
        module = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():  # zero-initialised heads (ViT) would give all-zero logits
        for parameter in module.parameters():
            if parameter.dim() > 1 and not parameter.any():
                parameter.normal_(0.0, 0.02)
    dynamic = None if fixed_batch else {"input": {0: "batch"}, "logits": {0: "batch"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False,
            opset_version=opset, do_constant_folding=False, input_names=["input"],
            output_names=["logits"], dynamic_axes=dynamic,
        )


def reads_quantized_weight(node) -> bool:
    """Whether the Conv/Gemm ``node`` reads its weight from a DequantizeLinear (and Reshape)."""
    return weight_dequantize(node.inputs[1]) is not None
