"""Data: datasets of calibration and evaluation samples, and the statistics calibration collects
from onnxruntime runs (channel moments, Gram matrices).
"""
