"""Loading, checking and saving models; the metadata onnxq records in them."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxq import outputs
from onnxq.errors import OnnxqError
from onnxq.passes import FoldBatchNormPass
from onnxq.preprocessing import METADATA_KEY, Preprocessing

TARGET_OPSET = 21
MIN_IR_VERSION = 10  # int4 tensors and opset 21 need IR version 10


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX model, convert it to opset 21 if older, and canonicalise it.

    Canonical form: constants as initializers, BatchNormalization folded, every node and value
    named, nodes in topological order. Raises ``OnnxqError`` for anything the user must fix.
    """
    proto = _read_proto(Path(path))
    proto = _to_target_opset(proto, path)
    model = ir.serde.deserialize_model(proto)
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)
    canonicalize(model)
    return model


def _read_proto(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise OnnxqError(f"{path}: no such file")
    if path.is_dir():
        raise OnnxqError(f"{path}: is a folder, not an ONNX model")
    try:
        proto = onnx.load(str(path))
    except (DecodeError, RuntimeWarning, ValueError, OSError) as error:
        raise OnnxqError(f"{path}: not an ONNX model ({type(error).__name__})") from None
    if not proto.graph.node:
        raise OnnxqError(f"{path}: not an ONNX model (no graph nodes)")
    return proto


def _to_target_opset(proto: onnx.ModelProto, path: str | os.PathLike) -> onnx.ModelProto:
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None:
        raise OnnxqError(f"{path}: the model imports no standard ONNX opset")
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


def canonicalize(model: ir.Model) -> None:
    """Bring any model into the form the quantization passes expect (in place)."""
    common = ir.passes.common
    ir.passes.PassManager(
        [
            common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=0),
            common.RemoveInitializersFromInputsPass(),
            FoldBatchNormPass(),
            common.IdentityEliminationPass(),
            common.RemoveUnusedNodesPass(),
            common.NameFixPass(),
            common.TopologicalSortPass(),
        ]
    )(model)


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
    text = model.metadata_props.get(METADATA_KEY)
    return Preprocessing.from_json(text) if text else None


def set_preprocessing(model: ir.Model, preprocessing: Preprocessing) -> None:
    model.metadata_props[METADATA_KEY] = preprocessing.to_json()


def default_opset_version(model: ir.Model) -> int:
    return model.opset_imports.get("", 0)
