"""Comparing two evaluations of the same images."""

from __future__ import annotations

import numpy as np
import pytest

from onnxq.io import data
from onnxq.reporting.evaluate import EvalResult


def result(predictions: tuple[int, ...]) -> EvalResult:
    return EvalResult(len(predictions), 0.0, 0.0, 0.0, "CPUExecutionProvider", predictions)


def test_agreement_is_the_share_of_images_with_the_same_class():
    assert result((1, 2, 3, 4)).agreement(result((1, 2, 0, 4))) == 75.0
    assert result((5, 5)).agreement(result((5, 5))) == 100.0


def test_agreement_refuses_evaluations_of_different_images():
    with pytest.raises(ValueError, match="same images"):
        result((1, 2)).agreement(result((1, 2, 3)))


def test_logit_divergences_are_kl_of_the_softmaxes(tiny_path, sample_images, tmp_path):
    """KL(fp32 ‖ model) per image against torch's, for a model whose logits are doubled; zero
    for the model against itself."""
    import onnx
    import torch

    from onnxq.pipeline import modelio
    from onnxq.reporting import evaluate

    proto = onnx.load(tiny_path)
    for tensor in proto.graph.initializer:
        if tensor.name in ("fc.weight", "fc.bias"):
            doubled = onnx.numpy_helper.to_array(tensor) * 2
            tensor.CopyFrom(onnx.numpy_helper.from_array(doubled, tensor.name))
    onnx.save(proto, tmp_path / "doubled.onnx")
    images = sample_images.head(10)
    preprocessing = modelio.get_preprocessing(modelio.load_model(tiny_path))
    itself = evaluate.logit_divergences(str(tiny_path), str(tiny_path), images, preprocessing)
    assert itself.shape == (10,) and np.all(itself == 0)
    divergences = evaluate.logit_divergences(
        str(tiny_path), str(tmp_path / "doubled.onnx"), images, preprocessing, batch_size=4
    )
    logits = [
        np.concatenate([evaluate.runtime.create_session(str(path), "cpu").run(None, {"input": x})[0]
                        for x, _ in data.iter_batches(images, preprocessing, 4)])
        for path in (tiny_path, tmp_path / "doubled.onnx")
    ]
    log_p, log_q = (torch.log_softmax(torch.from_numpy(z).double(), 1) for z in logits)
    expected = torch.nn.functional.kl_div(log_q, log_p, log_target=True, reduction="none").sum(1)
    np.testing.assert_allclose(divergences, expected.numpy(), rtol=1e-5, atol=1e-9)
    assert divergences.min() > 0
