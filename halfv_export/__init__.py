"""halfv-export: compile VLM decoders to ONNX/TensorRT with HalfV visual-token pruning inside the graph."""

__version__ = "0.1.0"
