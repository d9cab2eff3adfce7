"""The model as files, tensors and a graph: reading and writing ONNX (external data, lazily), shape
folding and inference, input sizes, and the one place onnxruntime sessions are built.
"""
