"""Changing a model: surgery (slicing weights, rewriting attributes), masks (the masked references,
mask mode) and compensation (bias, least squares, OBS, sequential refits).
"""
