"""Image preprocessing recorded in a model's metadata, so later commands need no flags."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
from PIL import Image

from onnxq.base.errors import OnnxqError

_INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


#: Channel orders of the model input.
CHANNEL_ORDERS = ("rgb", "bgr")
#: Pixel ranges of the model input before normalisation: 0–1 or 0–255.
INPUT_RANGES = (1, 255)
#: torchvision's ratio of crop to resize (224 of 256).
CROP_RATIO = 224 / 256


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Resize the short side, centre-crop, scale the pixels to ``[0, input_range]``, order the
    channels (``rgb`` or ``bgr``), normalise per channel; NCHW.

    ``mean`` and ``std`` are per input channel, in the input's channel order and pixel range
    (Caffe models: ``bgr``, range 255, mean ``(103.94, 116.78, 123.68)``, std 1).
    """

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channels: str = "rgb"
    input_range: int = 1

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise OnnxqError(
                f"unknown interpolation {self.interpolation!r} "
                f"(choose from {', '.join(_INTERPOLATIONS)})"
            )
        if self.crop > self.resize or self.crop < 1:
            raise OnnxqError(f"crop {self.crop} must be between 1 and the resize {self.resize}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise OnnxqError("preprocessing mean and std need one value per RGB channel")
        if self.channels not in CHANNEL_ORDERS:
            raise OnnxqError(
                f"unknown channel order {self.channels!r} (choose from {', '.join(CHANNEL_ORDERS)})"
            )
        if self.input_range not in INPUT_RANGES:
            raise OnnxqError(f"input_range must be 1 or 255, got {self.input_range}")
        if not all(math.isfinite(v) for v in self.mean + self.std) or min(self.std) <= 0:
            raise OnnxqError(
                f"preprocessing std must be positive and mean/std finite, got mean {list(self.mean)} "
                f"std {list(self.std)}"
            )

    def to_json(self) -> str:
        """JSON of the fields; channel order and range only where they are not the defaults,
        so that descriptions written before they existed read back unchanged."""
        fields = dataclasses.asdict(self)
        for name in ("channels", "input_range"):
            if fields[name] == _DEFAULTS[name]:
                del fields[name]
        return json.dumps(fields, sort_keys=True)

    def describe(self) -> str:
        """``"resize 256, crop 224, bilinear, RGB 0–1, mean …, std …"``."""
        values = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
        return (
            f"resize {self.resize}, crop {self.crop}, {self.interpolation}, "
            f"{self.channels.upper()} 0–{self.input_range}, mean {values(self.mean)}, "
            f"std {values(self.std)}"
        )

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
                channels=str(data.get("channels", _DEFAULTS["channels"])),
                input_range=int(data.get("input_range", _DEFAULTS["input_range"])),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise OnnxqError(f"invalid preprocessing description {text!r}: {error}") from None

    def load(self, path: str) -> np.ndarray:
        """Read one image file as a normalised ``[3, crop, crop]`` float32 array."""
        image = self._center_crop(self._resize_short_side(read_rgb(path)))
        array = np.asarray(image, dtype=np.float32)
        if self.input_range != 255:
            array = array / 255.0
        if self.channels == "bgr":
            array = array[:, :, ::-1]
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


_DEFAULTS = {field.name: field.default for field in dataclasses.fields(Preprocessing)}

PRESETS = {
    "torchvision": Preprocessing(),
    "efficientnet-lite": Preprocessing(
        interpolation="bilinear", mean=(127.0 / 255,) * 3, std=(128.0 / 255,) * 3
    ),
    "inception": Preprocessing(resize=342, crop=299, mean=(0.5,) * 3, std=(0.5,) * 3),
    "caffe": Preprocessing(
        mean=(103.939, 116.779, 123.68), std=(1.0,) * 3, channels="bgr", input_range=255
    ),
}


def for_input_size(size: int, base: Preprocessing = PRESETS["torchvision"]) -> Preprocessing:
    """``base`` with its crop set to ``size`` and the resize scaled as torchvision's 224/256."""
    return dataclasses.replace(base, crop=size, resize=max(size, round(size / CROP_RATIO)))


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


def read_rgb(path: str) -> Image.Image:
    """Any image Pillow opens as 8-bit RGB: 16-bit and 32-bit grey scaled to 0–255 (not
    clipped), palette and alpha images flattened onto white, CMYK and others converted. Images
    over Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) are refused."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return _to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise OnnxqError(f"{path}: image too large to read ({error})") from None
    except OSError as error:  # unreadable or not an image
        raise OnnxqError(f"{path}: cannot read the image ({error})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        grey = np.clip(np.round(array * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("P", "PA", "LA", "RGBA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")

