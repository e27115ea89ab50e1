import pytest

from onnxq.base.errors import OnnxqError
from onnxq.core.schemes import Granularity, Observer, Scheme, scheme_names


@pytest.mark.parametrize("name", scheme_names())
def test_every_scheme_name_round_trips(name):
    group_size = 8 if "group" in name else None
    scheme = Scheme.parse(name, bits=4, group_size=group_size, observer="mse")
    assert scheme.name == name
    assert Scheme.from_dict(scheme.to_dict()) == scheme


def test_parse_fields():
    scheme = Scheme.parse("per-group-symmetric", bits=4, group_size=16, observer="mse")
    assert scheme.granularity is Granularity.GROUP
    assert scheme.symmetric and scheme.signed
    assert scheme.observer is Observer.MSE


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="per-block-affine", bits=4), "unknown scheme"),
        (dict(name="per-tensor-asym", bits=4), "unknown scheme"),
        (dict(name="per-group-affine", bits=4), "needs a group size"),
        (dict(name="per-group-affine", bits=4, group_size=0), "positive"),
        (dict(name="per-channel-affine", bits=4, group_size=8), "only applies"),
        (dict(name="per-tensor-affine", bits=1), "not supported"),
        (dict(name="per-tensor-affine", bits=9), "not supported"),
        (dict(name="per-tensor-affine", bits=8, observer="entropy"), "unknown observer"),
    ],
)
def test_bad_schemes_are_user_errors(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(OnnxqError, match=message):
        Scheme.parse(name, **kwargs)
