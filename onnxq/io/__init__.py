"""Inputs and runtimes: image sets, preprocessing, ONNX Runtime sessions."""
