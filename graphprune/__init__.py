"""graphprune: structured pruning of ONNX models."""
