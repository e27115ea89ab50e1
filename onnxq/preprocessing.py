"""Image preprocessing recorded in a model's metadata, so later commands need no flags."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from PIL import Image

from onnxq.errors import OnnxqError

METADATA_KEY = "onnxq.preprocessing"

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Resize the short side, centre-crop, scale to [0, 1], normalise per channel (RGB, NCHW)."""

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise OnnxqError(
                f"unknown interpolation {self.interpolation!r} "
                f"(choose from {', '.join(_INTERPOLATIONS)})"
            )
        if self.crop > self.resize or self.crop < 1:
            raise OnnxqError(f"crop {self.crop} must be between 1 and the resize {self.resize}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        try:
            data = json.loads(text)
            return cls(
                resize=int(data["resize"]),
                crop=int(data["crop"]),
                interpolation=str(data["interpolation"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise OnnxqError(f"invalid preprocessing description {text!r}: {error}") from None

    def load(self, path: str) -> np.ndarray:
        """Read one image file as a normalised ``[3, crop, crop]`` float32 array."""
        with Image.open(path) as image:
            image = image.convert("RGB")
            image = self._resize_short_side(image)
            image = self._center_crop(image)
            array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    def _resize_short_side(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.resize * long / short)
        size = (self.resize, new_long) if width <= height else (new_long, self.resize)
        return image.resize(size, _INTERPOLATIONS[self.interpolation])

    def _center_crop(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        top = int(round((height - self.crop) / 2.0))
        left = int(round((width - self.crop) / 2.0))
        return image.crop((left, top, left + self.crop, top + self.crop))


PRESETS = {
    "torchvision": Preprocessing(),
    "efficientnet-lite": Preprocessing(
        interpolation="bilinear", mean=(127.0 / 255,) * 3, std=(128.0 / 255,) * 3
    ),
    "inception": Preprocessing(resize=342, crop=299, mean=(0.5,) * 3, std=(0.5,) * 3),
}


def resolve(text: str | None) -> Preprocessing | None:
    """A preset name or a JSON description (as ``to_json`` writes it); None stays None."""
    if text is None:
        return None
    if text in PRESETS:
        return PRESETS[text]
    if text.lstrip().startswith("{"):
        return Preprocessing.from_json(text)
    raise OnnxqError(
        f"unknown preprocessing {text!r}: give a preset ({', '.join(PRESETS)}) or JSON"
    )
