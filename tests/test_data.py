import shutil

import numpy as np
import pytest

from onnxq.base.errors import OnnxqError
from onnxq.io import data
from onnxq.io.preprocessing import PRESETS, Preprocessing


def test_flat_wnid_layout(sample_images):
    assert len(sample_images) == 500 and sample_images.labelled
    wnids = data.imagenet_wnids()
    assert len(wnids) == 1000
    first = sample_images.files[0]
    assert wnids[sample_images.labels[0]] == first.name.split("_")[0]


def test_folder_and_trailing_index_layouts(tmp_path, sample_images):
    source = sample_images.files[0]
    wnid = source.name.split("_")[0]
    (tmp_path / "val" / wnid).mkdir(parents=True)
    shutil.copy(source, tmp_path / "val" / wnid / "a.JPEG")
    shutil.copy(source, tmp_path / "val" / "imagenet_07_609.jpg")
    shutil.copy(source, tmp_path / "val" / "holiday.jpg")
    images = data.find_images(tmp_path / "val")
    labels = {path.name: label for path, label in zip(images.files, images.labels)}
    assert labels == {"a.JPEG": sample_images.labels[0], "imagenet_07_609.jpg": 609, "holiday.jpg": -1}
    with pytest.raises(OnnxqError, match="cannot tell the class of holiday.jpg"):
        data.require_labels(images, tmp_path / "val")


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(OnnxqError, match="no such folder"):
        data.find_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OnnxqError, match="no images found"):
        data.find_images(tmp_path / "empty")


def test_sample_and_split_are_deterministic_and_disjoint(sample_images):
    a, b = sample_images.sample(128, seed=0), sample_images.sample(128, seed=0)
    assert a.files == b.files and len(a) == 128
    assert list(a.files) == sorted(a.files)
    calibration, rest = sample_images.split(128)
    assert calibration.files == a.files
    assert len(rest) == 372 and not set(rest.files) & set(calibration.files)


def test_preprocessing_matches_hand_computation(sample_images):
    from PIL import Image

    path = sample_images.files[0]
    prep = Preprocessing(resize=256, crop=224)
    pixels = prep.load(str(path))
    assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32
    with Image.open(path) as image:
        w, h = image.size
        scale = 256 / min(w, h)
        resized = image.convert("RGB").resize((round(w * scale) if w > h else 256, 256 if w > h else int(h * scale)), Image.Resampling.BILINEAR)
    left = int(round((resized.size[0] - 224) / 2))
    top = int(round((resized.size[1] - 224) / 2))
    crop = np.asarray(resized, np.float32)[top : top + 224, left : left + 224] / 255
    expected = ((crop - np.array(prep.mean)) / np.array(prep.std)).transpose(2, 0, 1)
    np.testing.assert_allclose(pixels, expected, atol=1e-5)


def test_batches_keep_order_and_labels(sample_images):
    subset = sample_images.head(10)
    batches = list(data.iter_batches(subset, PRESETS["efficientnet-lite"], batch_size=4))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    assert np.concatenate([b[1] for b in batches]).tolist() == list(subset.labels)
    np.testing.assert_array_equal(batches[2][0][1], PRESETS["efficientnet-lite"].load(str(subset.files[9])))


def test_bgr_0_to_255_preprocessing_and_the_caffe_preset(sample_images):
    path = str(sample_images.files[0])
    rgb = Preprocessing(mean=(0.0,) * 3, std=(1.0,) * 3).load(path)
    caffe = PRESETS["caffe"]
    assert (caffe.channels, caffe.input_range) == ("bgr", 255)
    expected = rgb[::-1] * 255 - np.asarray(caffe.mean, np.float32)[:, None, None]
    np.testing.assert_allclose(caffe.load(path), expected, rtol=1e-5, atol=1e-3)
    assert Preprocessing.from_json(caffe.to_json()) == caffe
    # descriptions written before channel order and range existed read back, and are written so
    old = '{"crop": 224, "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406], "resize": 256, "std": [0.229, 0.224, 0.225]}'
    assert Preprocessing.from_json(old) == PRESETS["torchvision"]
    assert PRESETS["torchvision"].to_json() == old
    with pytest.raises(OnnxqError, match="unknown channel order 'grb'"):
        Preprocessing(channels="grb")
    with pytest.raises(OnnxqError, match="input_range must be 1 or 255"):
        Preprocessing(input_range=100)
