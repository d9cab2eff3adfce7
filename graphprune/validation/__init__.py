"""The contract every result passes: checker, onnxruntime, exactness against an independent
reference, fidelity and accuracy on data, quantized exactness.
"""
