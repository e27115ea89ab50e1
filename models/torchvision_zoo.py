"""torchvision classifiers by name, with their pretrained weights when cached locally."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from onnxq.base.errors import OnnxqError
from onnxq.io.preprocessing import Preprocessing


#: ONNX files are protobuf messages, which cannot exceed 2 GiB; onnxq writes no external data.
MAX_PARAMETERS = (2**31 - 2**26) // 4  # float32 weights, with room for the graph


def available() -> list[str]:
    """Names of torchvision's classification models whose float32 weights fit one ONNX file
    (``regnet_y_128gf`` and ``vit_h_14``, 630 to 645 million parameters, do not)."""
    return [name for name in _classifiers() if _parameters(name) <= MAX_PARAMETERS]


def _classifiers() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _parameters(name: str) -> int:
    """The largest parameter count of ``name``'s published weight sets."""
    import torchvision

    return max(w.meta["num_params"] for w in torchvision.models.get_model_weights(name))


def build(name: str, weights: str | None, random_weights: bool):
    """``(module, preprocessing, weights description)`` for torchvision model ``name``.

    Weights come from ``weights`` (a state dict), else from torch's cache (any of the model's
    published weight sets, newest first), else random with ``random_weights``. Preprocessing is
    that of the matching weight set (a file named like a published one counts as that one).
    """
    import torchvision

    if name not in _classifiers():
        raise OnnxqError(f"unknown model {name!r}: not a torchvision classifier (see onnxq export --list)")
    if (parameters := _parameters(name)) > MAX_PARAMETERS:
        raise OnnxqError(
            f"{name} has {parameters / 1e6:.0f} million parameters: its float32 weights do "
            "not fit one ONNX file (2 GiB); onnxq does not write external data"
        )
    variants = list(torchvision.models.get_model_weights(name))
    default = torchvision.models.get_model_weights(name).DEFAULT
    module = torchvision.models.get_model(name, weights=None)
    if weights is not None:
        variant = next((v for v in variants if _file_name(v.url) == Path(weights).name), default)
        load_state_dict(module, weights)
        return module, _preprocessing(variant), f"file:{Path(weights).name}"
    for variant in sorted(variants, key=lambda v: v is not default):
        if cached_weights(variant.url).exists():
            load_state_dict(module, cached_weights(variant.url))
            return module, _preprocessing(variant), f"torchvision:{variant}"
    if random_weights:
        return module, _preprocessing(default), "random(seed=0)"
    raise OnnxqError(
        f"no pretrained weights for {name}: {cached_weights(default.url)} is not in torch's cache "
        "and downloads are not attempted; pass --weights FILE (a state dict) or --random-weights"
    )


def _file_name(url: str) -> str:
    return Path(urlparse(url).path).name


def cached_weights(url: str) -> Path:
    """Where ``torch.hub`` keeps the file of ``url``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / _file_name(url)


def load_state_dict(module, path: str | Path) -> None:
    """Load a state dict (or a checkpoint holding one) strictly into ``module``."""
    import torch

    path = Path(path)
    if not path.exists():
        raise OnnxqError(f"{path}: no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise OnnxqError(f"{path}: not a PyTorch state dict ({type(error).__name__})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise OnnxqError(f"{path}: weights do not fit the model ({first[1].strip() if len(first) > 1 else first[0]})") from None


def _preprocessing(weights_enum) -> Preprocessing:
    transforms = weights_enum.transforms()
    return Preprocessing(
        resize=int(transforms.resize_size[0]),
        crop=int(transforms.crop_size[0]),
        interpolation=transforms.interpolation.value,
        mean=tuple(float(v) for v in transforms.mean),
        std=tuple(float(v) for v in transforms.std),
    )
