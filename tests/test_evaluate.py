"""Comparing two evaluations of the same images."""

from __future__ import annotations

import pytest

from onnxq.reporting.evaluate import EvalResult


def result(predictions: tuple[int, ...]) -> EvalResult:
    return EvalResult(len(predictions), 0.0, 0.0, 0.0, "CPUExecutionProvider", predictions)


def test_agreement_is_the_share_of_images_with_the_same_class():
    assert result((1, 2, 3, 4)).agreement(result((1, 2, 0, 4))) == 75.0
    assert result((5, 5)).agreement(result((5, 5))) == 100.0


def test_agreement_refuses_evaluations_of_different_images():
    with pytest.raises(ValueError, match="same images"):
        result((1, 2)).agreement(result((1, 2, 3)))
