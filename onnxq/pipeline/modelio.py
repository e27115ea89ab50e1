"""Loading, checking and saving models; the metadata onnxq records in them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxq.base import metadata, outputs, progress
from onnxq.base.errors import OnnxqError
from onnxq.io.preprocessing import PRESETS, Preprocessing, for_input_size
from onnxq.passes import CanonicalizePass, CanonicalizeResult

TARGET_OPSET = 21
MIN_IR_VERSION = 10  # int4 tensors and opset 21 need IR version 10


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX model, convert it to opset 21 if older, and canonicalise it; a note says
    what changed (nothing for a model already canonical).

    Canonical form (``CanonicalizePass``): constant subgraphs folded into initializers, no
    Identity, BatchNormalization folded, every node and value named, nodes in topological
    order. Raises ``OnnxqError`` for anything the user must fix.
    """
    model, changes = load_model_and_changes(path)
    if changes:
        progress.status(f"[yellow]note:[/] {Path(path).name}: {changes}")
    return model


def load_model_and_changes(path: str | os.PathLike) -> tuple[ir.Model, str]:
    """``load_model`` without the note: the model and what loading changed, in words."""
    proto = _read_proto(Path(path))
    opset = _standard_opset(proto, path)
    proto = _to_target_opset(proto, path)
    try:
        check_proto(proto)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise OnnxqError(f"{path}: invalid ONNX model: {_first_line(error)}") from None
    model = ir.serde.deserialize_model(proto)
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)
    changes = [f"opset {opset} converted to {TARGET_OPSET}"] if opset < TARGET_OPSET else []
    summary = canonicalize(model).summary()
    if summary:
        changes.append(f"canonicalized ({summary})")
    return model, "; ".join(changes)


def _read_proto(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise OnnxqError(f"{path}: no such file")
    if path.is_dir():
        raise OnnxqError(f"{path}: is a folder, not an ONNX model")
    try:
        proto = onnx.load(str(path))
    except onnx.checker.ValidationError as error:  # external data that cannot be read
        raise OnnxqError(f"{path}: cannot read its weights: {_first_line(error)}") from None
    except (DecodeError, RuntimeWarning, ValueError, OSError) as error:
        raise OnnxqError(f"{path}: not an ONNX model ({type(error).__name__})") from None
    if not proto.graph.node:
        raise OnnxqError(f"{path}: not an ONNX model (no graph nodes)")
    return proto


def _standard_opset(proto: onnx.ModelProto, path: str | os.PathLike) -> int:
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None:
        raise OnnxqError(f"{path}: the model imports no standard ONNX opset")
    return version


def _to_target_opset(proto: onnx.ModelProto, path: str | os.PathLike) -> onnx.ModelProto:
    version = _standard_opset(proto, path)
    if version >= TARGET_OPSET:
        return proto
    try:
        return onnx.version_converter.convert_version(proto, TARGET_OPSET)
    except Exception as error:  # the converter raises many error types
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OnnxqError(
            f"{path}: opset {version} is older than {TARGET_OPSET} and could not be converted "
            f"({message})"
        ) from None


def check_classifier(model: ir.Model, name: str | os.PathLike) -> None:
    """``OnnxqError`` unless ``model`` reads one float32 image batch ``[N, C, H, W]``."""
    inputs = [value for value in model.graph.inputs if not value.is_initializer()]
    described = ", ".join(f"{v.name} ({_dtype_name(v)} {_shape_text(v)})" for v in inputs)
    if len(inputs) != 1:
        raise OnnxqError(
            f"{name}: onnxq takes image classifiers with one input [N, C, H, W]; "
            f"this model has {len(inputs)}: {described}"
        )
    (value,) = inputs
    if value.dtype != ir.DataType.FLOAT or value.shape is None or len(value.shape) != 4:
        raise OnnxqError(
            f"{name}: onnxq takes image classifiers with one float32 input [N, C, H, W]; "
            f"this model's input is {described}"
        )


def check_float_model(model: ir.Model, name: str | os.PathLike) -> None:
    """``OnnxqError`` if ``model`` is already quantized or has non-finite float weights."""
    quantized = [node for node in model.graph if node.op_type in _QUANTIZED_OPS]
    if quantized:
        raise OnnxqError(
            f"{name}: already quantized ({len(quantized)} {quantized[0].op_type} and similar "
            "nodes); quantize the float model it came from"
        )
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is not None and tensor.dtype.is_floating_point():
            array = tensor.numpy()
            if not np.isfinite(array).all():
                bad = int((~np.isfinite(array)).sum())
                raise OnnxqError(f"{name}: weight {value.name} has {bad} NaN or infinite values")


#: Ops that only a quantized model has.
_QUANTIZED_OPS = (
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
    "QLinearMatMul", "ConvInteger", "MatMulInteger",
)


def _dtype_name(value: ir.Value) -> str:
    return "unknown type" if value.dtype is None else value.dtype.name.lower()


def _shape_text(value: ir.Value) -> str:
    return "[?]" if value.shape is None else "[" + ", ".join(str(d) for d in value.shape) + "]"


def _first_line(error: BaseException) -> str:
    """The error's message on one line (checker messages span several)."""
    text = " ".join(str(error).split())
    return text[:300] if text else type(error).__name__


def canonicalize(model: ir.Model) -> CanonicalizeResult:
    """Bring any model into the form the quantization passes expect (in place)."""
    return CanonicalizePass()(model)


def save_model(model: ir.Model, path: str | os.PathLike, check: bool = True) -> None:
    """Write ``model`` to ``path`` atomically: a failure leaves no partly written file.

    With ``check`` the model must pass ``onnx.checker.check_model(full_check=True)`` first.
    """
    proto = ir.serde.serialize_model(model)
    if check:
        check_proto(proto)
    path = outputs.check_output(path)
    with outputs.atomic_write(path) as temporary:
        onnx.save(proto, str(temporary))


def check_proto(proto: onnx.ModelProto) -> None:
    """Run the full ONNX checker (with shape inference)."""
    onnx.checker.check_model(proto, full_check=True)


def get_preprocessing(model: ir.Model) -> Preprocessing | None:
    """The preprocessing recorded by ``onnxq export``, if any."""
    text = model.metadata_props.get(metadata.PREPROCESSING)
    return Preprocessing.from_json(text) if text else None


def choose_preprocessing(
    model: ir.Model, given: Preprocessing | None, name: str | os.PathLike
) -> Preprocessing:
    """``given``, else the recorded preprocessing, else torchvision's with the crop the input
    shape fixes (said in a note). ``OnnxqError`` when the crop disagrees with a fixed input."""
    chosen = given or get_preprocessing(model)
    size = input_size(model)
    if chosen is None:
        chosen = PRESETS["torchvision"] if size is None else for_input_size(size)
        source = "torchvision's"
        if size not in (None, 224):
            source += f", crop {size} from the input shape"
        progress.status(
            f"[yellow]note:[/] {Path(name).name} records no preprocessing; using {source} "
            f"({chosen.describe()}). Pass --preprocess to change it."
        )
    if size is not None and chosen.crop != size:
        raise OnnxqError(
            f"{name}: its input is {size}×{size} but the preprocessing crops {chosen.crop}×"
            f"{chosen.crop}; pass --preprocess with \"crop\": {size}"
        )
    return chosen


def input_size(model: ir.Model) -> int | None:
    """The fixed, square spatial size of the model's image input, if it has one."""
    inputs = [value for value in model.graph.inputs if not value.is_initializer()]
    shape = inputs[0].shape if inputs else None
    if shape is None or len(shape) != 4:
        return None
    height, width = shape[2], shape[3]
    return height if isinstance(height, int) and height == width else None


def set_preprocessing(model: ir.Model, preprocessing: Preprocessing) -> None:
    model.metadata_props[metadata.PREPROCESSING] = preprocessing.to_json()


def default_opset_version(model: ir.Model) -> int:
    return model.opset_imports.get("", 0)
