"""Model zoo adapters: build, load weights and export torch models to ONNX (installed as ``onnxq.models``)."""
