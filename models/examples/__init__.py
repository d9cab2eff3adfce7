"""Bundled example models (regenerate with ``python -m models.examples.make_examples``)."""

from __future__ import annotations


def onnx_accuracy(model_path, net, data: dict) -> dict[str, float]:
    """Top-1 of the exported model on each split of ``data`` ({name: (x, y)}), one sample per
    run, checked against the torch ``net`` it was exported from: a disagreement ends the
    training script (the train extra's torch; never imported by the package or the tests)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    accuracy = {}
    for name, (x, y) in data.items():
        with torch.no_grad():
            torch_pred = net(torch.from_numpy(x)).argmax(1).numpy()
        ort_pred = np.array([sess.run(None, {"input": x[i : i + 1]})[0].argmax() for i in range(len(x))])
        if not np.array_equal(torch_pred, ort_pred):
            raise SystemExit(f"{name}: onnxruntime and torch disagree on {int((torch_pred != ort_pred).sum())} samples")
        accuracy[name] = float(np.mean(ort_pred == y))
        print(f"{name}: {len(y)} samples, top-1 {accuracy[name]:.4f} (onnxruntime = torch)")
    return accuracy
