"""Every ``metadata_props`` key onnxq writes, so that a graph in Netron explains itself.

Model keys describe the whole run; node keys sit on the DequantizeLinear (or Mul) nodes that
onnxq inserts. This module imports nothing: every layer may read it.
"""

from __future__ import annotations

# Model metadata.
#: The resolved ``QuantConfig`` (JSON) that produced the model.
QUANTIZATION = "onnxq.quantization"
#: The onnxq version that wrote the quantized model.
VERSION = "onnxq.version"
#: The ``Preprocessing`` (JSON) the model expects.
PREPROCESSING = "onnxq.preprocessing"
#: Per channel set, what smooth and reorder did (JSON list).
CHANNEL_SETS = "onnxq.channel_sets"
#: The probes of the automatic channel passes and which was kept (JSON list).
PASS_SELECTION = "onnxq.pass_selection"
#: What ``--bit-budget`` measured and kept: each candidate layer's divergence and added bits (JSON).
BIT_ALLOCATION = "onnxq.bit_allocation"
#: The deployed form: ``int8-kernels`` or ``float-weights``.
DEPLOYMENT = "onnxq.deployment"
#: Which model zoo entry an exported model came from.
SOURCE = "onnxq.source"

# Node metadata (on the Q/DQ and Mul nodes onnxq inserts).
#: What the node serves: ``weight``, ``feature``, ``weight_scale`` or ``smooth``.
ROLE = "onnxq.role"
#: Bits of the quantized values (the storage type may be wider).
BITS = "onnxq.bits"
#: Scheme name, e.g. ``per-group-affine``.
SCHEME = "onnxq.scheme"
#: Input channels per scale group ("" when not grouped).
GROUP_CHANNELS = "onnxq.group_channels"
#: Observer that chose the range.
OBSERVER = "onnxq.observer"
#: Grid of a symmetric weight: ``restricted`` or ``full``.
SYMMETRIC_RANGE = "onnxq.symmetric_range"
#: Bits of the integer codes of a decomposed scale.
SCALE_BITS = "onnxq.scale_bits"
