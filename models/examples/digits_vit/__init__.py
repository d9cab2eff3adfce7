"""A small vision transformer really trained on scikit-learn's 8x8 digits, as a bundled example.

It shares its data with :mod:`models.examples.digits` (the CNN): the same train / calibration /
test split, the same ``.npz`` files and input layout. Files (regenerate with
``python -m models.examples.digits_vit.train``, which needs the ``train`` extra: torch,
scikit-learn and onnxscript; nothing here needs them to be used):

- ``digits_vit.onnx``: the trained network (:func:`models.examples.digits_vit.net.digits_vit`),
  input ``input`` float32 ``[1, 1, 8, 8]`` (pixels divided by 16), output ``logits`` ``[1, 10]``;
  exported by torch's default (dynamo) exporter at opset 18. Its attention heads (3 groups of 4)
  and MLP hidden units (3 groups of 256) are prunable; the residual stream is not (LayerNorm).
- ``digits_vit.json``: what the training run measured (accuracy of the ONNX model per split).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..digits import CALIB, TEST, TRAIN

HERE = Path(__file__).resolve().parent
MODEL = HERE / "digits_vit.onnx"
SUMMARY = HERE / "digits_vit.json"

__all__ = ["CALIB", "HERE", "MODEL", "SUMMARY", "TEST", "TRAIN", "summary"]


def summary() -> dict:
    """The training run's measurements (``accuracy`` per split, split sizes, seed)."""
    return json.loads(SUMMARY.read_text())
