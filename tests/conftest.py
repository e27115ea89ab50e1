"""Shared fixtures: the real sample images, a tiny generated CNN and exported real models."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import tiny_cnn  # noqa: E402

from onnxq.base import progress  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO.parent / "shared" / "data" / "imagenet-sample"
SEED_RESULTS = REPO.parent / "shared" / "seed-results.md"

progress.set_quiet(True)


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The 500 real ImageNet images (one per class) shipped beside the repository."""
    if not SAMPLE_DIR.is_dir():
        pytest.fail(f"{SAMPLE_DIR} is missing: the tests need ../shared/data")
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def seed_results() -> str:
    """The experiment log whose tables the sweeps reproduce (../shared/seed-results.md)."""
    if not SEED_RESULTS.is_file():
        pytest.fail(f"{SEED_RESULTS} is missing: the tests need ../shared/seed-results.md")
    return SEED_RESULTS.read_text()


@pytest.fixture(scope="session")
def sample_images(sample_dir):
    from onnxq.io import data

    return data.find_images(sample_dir)


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(tiny_cnn(), str(path))
    return path


@pytest.fixture(scope="session")
def effnet_path(tmp_path_factory) -> Path:
    """EfficientNet-Lite0 with its real ImageNet weights, exported once per test worker."""
    from onnxq.models.export import export_model

    path = tmp_path_factory.mktemp("effnet") / "efficientnet_lite0.onnx"
    export_model("efficientnet_lite0", path)
    return path
