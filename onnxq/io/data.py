"""Image folders: discovery, labels, deterministic calibration subsets and batched loading.

Three layouts are understood, all labelled by the ImageNet-1k class index (the sorted wnid
list in ``imagenet_wnids.txt``):

* ``DIR/<wnid>/*.JPEG`` (the ImageNet validation layout),
* ``DIR/<wnid>_<anything>.JPEG`` (a flat folder, e.g. ``n01440764_tench.JPEG``),
* ``DIR/<anything>_<index>.jpg`` (a flat folder whose names end in the class index).

Calibration needs no labels: any folder of images will do.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np

from onnxq.base.errors import OnnxqError
from onnxq.io.preprocessing import Preprocessing

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
_WNID = re.compile(r"^(n\d{8})(?:_|$)")
_TRAILING_INDEX = re.compile(r"_(\d{1,4})$")


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """Image files and, where the layout names them, their class indices (-1 when unknown)."""

    files: tuple[Path, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labelled(self) -> bool:
        return bool(self.labels) and all(label >= 0 for label in self.labels)

    def subset(self, indices: Sequence[int]) -> ImageSet:
        return ImageSet(
            tuple(self.files[i] for i in indices), tuple(self.labels[i] for i in indices)
        )

    def head(self, limit: int | None) -> ImageSet:
        """The first ``limit`` images (all when ``limit`` is None)."""
        return self if limit is None else self.subset(range(min(limit, len(self))))

    def sample(self, count: int, seed: int = 0) -> ImageSet:
        """A deterministic random subset of ``count`` images, kept in file order."""
        if count >= len(self):
            return self
        chosen = np.sort(np.random.default_rng(seed).choice(len(self), count, replace=False))
        return self.subset(chosen.tolist())

    def split(self, count: int, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """``sample(count, seed)`` and the remaining images, disjoint."""
        chosen = set(np.random.default_rng(seed).choice(len(self), min(count, len(self)), replace=False).tolist())
        first = [i for i in range(len(self)) if i in chosen]
        rest = [i for i in range(len(self)) if i not in chosen]
        return self.subset(first), self.subset(rest)


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k synset ids; index i is class i."""
    text = resources.files("onnxq").joinpath("imagenet_wnids.txt").read_text()
    return text.split()


def find_images(folder: str | os.PathLike, pattern: str = "*") -> ImageSet:
    """Discover the images of ``folder`` (matching ``pattern``) in any supported layout, sorted."""
    root = Path(folder)
    if not root.exists():
        raise OnnxqError(f"{root}: no such folder")
    if not root.is_dir():
        raise OnnxqError(f"{root}: not a folder")
    if not _listable(root):
        raise OnnxqError(f"{root}: permission denied (cannot list the folder)")
    try:
        files = sorted(
            p for p in root.rglob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
    except OSError as error:
        raise OnnxqError(f"{error.filename or root}: cannot list the folder ({error.strerror})") from None
    if not files:
        raise OnnxqError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    index_of = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    labels = tuple(_label_of(path, root, index_of) for path in files)
    return ImageSet(tuple(files), labels)


def _listable(folder: Path) -> bool:
    return os.access(folder, os.R_OK | os.X_OK)


def _label_of(path: Path, root: Path, index_of: dict[str, int]) -> int:
    relative = path.relative_to(root)
    for part in (relative.parts[0] if len(relative.parts) > 1 else None, path.stem):
        match = _WNID.match(part) if part else None
        if match and match.group(1) in index_of:
            return index_of[match.group(1)]
    match = _TRAILING_INDEX.search(path.stem)
    if match and int(match.group(1)) < len(index_of):
        return int(match.group(1))
    return -1


def require_labels(images: ImageSet, folder: str | os.PathLike) -> None:
    """Fail with a clear message when some images carry no class label."""
    if not images.labelled:
        unlabelled = next(f for f, label in zip(images.files, images.labels) if label < 0)
        raise OnnxqError(
            f"{folder}: cannot tell the class of {unlabelled.name}; use <wnid>/ subfolders, "
            "<wnid>_*.JPEG names or names ending in _<class index>"
        )


def iter_batches(
    images: ImageSet, preprocessing: Preprocessing, batch_size: int, workers: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(pixels [B, 3, crop, crop], labels [B])`` batches, decoding in a thread pool.

    The next batch decodes while the caller works on the current one; memory stays at two batches.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def submit(start: int) -> list:
            files = images.files[start : start + batch_size]
            return [pool.submit(_read, preprocessing, path) for path in files]

        pending = submit(0)
        for start in range(0, len(images), batch_size):
            current, pending = pending, submit(start + batch_size)
            labels = np.asarray(images.labels[start : start + batch_size], dtype=np.int64)
            yield np.stack([future.result() for future in current]), labels


def _read(preprocessing: Preprocessing, path: Path) -> np.ndarray:
    try:
        return preprocessing.load(str(path))
    except (OSError, ValueError) as error:
        raise OnnxqError(f"{path}: cannot read image ({error})") from None
