"""A small CNN really trained on scikit-learn's 8x8 digits, with its data, as a bundled example.

Files (regenerate with ``python -m models.examples.digits.train``, which needs the ``train``
extra: torch and scikit-learn; nothing here needs them to be used):

- ``digits_cnn.onnx``: the trained network, input ``input`` float32 ``[1, 1, 8, 8]`` (pixels
  divided by 16, so in [0, 1]; a fixed batch of 1 so that MACs are counted per sample), output
  ``logits`` ``[1, 10]``; BatchNormalization kept as nodes.
- ``digits_test.npz``, ``digits_calib.npz``, ``digits_train.npz``: a fixed, stratified split of
  the 1797 digits (497 / 200 / 1100), keys ``input`` (as the model takes it) and ``labels`` int64.
- ``digits_cnn.pt``: the trained torch ``state_dict`` of :func:`models.examples.digits.net.digits_cnn`
  (for torch-side references such as Torch-Pruning).
- ``digits_cnn.json``: what the training run measured (accuracy of the ONNX model per split),
  so tests and the README can check the numbers they state.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = HERE / "digits_cnn.onnx"
STATE_DICT = HERE / "digits_cnn.pt"
TEST = HERE / "digits_test.npz"
CALIB = HERE / "digits_calib.npz"
TRAIN = HERE / "digits_train.npz"
SUMMARY = HERE / "digits_cnn.json"


def summary() -> dict:
    """The training run's measurements (``accuracy`` per split, split sizes, seed)."""
    return json.loads(SUMMARY.read_text())
