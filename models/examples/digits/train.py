"""Train the digits CNN and write the bundled example files next to this module.

    pip install -e ".[train]"
    python -m models.examples.digits.train [--epochs N] [--seed S]

1. Split scikit-learn's 8x8 digits (bundled with the package: no download) into train 1100 /
   calibration 200 / test 497, stratified by label, with a fixed seed.
2. Train :func:`net.digits_cnn` on the train split (CPU, seeded, one thread, random one-pixel
   shifts as augmentation); about a minute.
3. Export ONNX with the TorchScript exporter (``dynamo=False``, opset 17) for a batch of 1.
   The batch is fixed, not dynamic, because graphprune counts MACs from inferred shapes and
   leaves nodes with a symbolic dim uncounted (``cost.py``): with a dynamic batch every
   report would show 0 FLOPs. Data files are streamed one sample at a time (``data.py``).
   ``training=TrainingMode.PRESERVE`` on a model in eval mode exports inference-mode
   BatchNormalization nodes; the default (``EVAL``) would fold them into the convolutions.
4. Check the ONNX model in onnxruntime: its predictions on every split must equal torch's,
   and record the accuracies in ``digits_cnn.json``.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .. import onnx_accuracy
from . import CALIB, MODEL, STATE_DICT, SUMMARY, TEST, TRAIN
from .net import WIDTH, digits_cnn, load_trained

SPLIT = {"train": 1100, "calib": 200, "test": 497}


def split(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Split name -> (inputs float32 [N, 1, 8, 8] in [0, 1], labels int64 [N])."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=SPLIT["test"], stratify=y, random_state=seed)
    x_train, x_calib, y_train, y_calib = train_test_split(
        x_rest, y_rest, test_size=SPLIT["calib"], stratify=y_rest, random_state=seed
    )
    return {"train": (x_train, y_train), "calib": (x_calib, y_calib), "test": (x_test, y_test)}


def train(x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    net = digits_cnn()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = -(-len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps_per_epoch)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(xs), generator=gen)
        total = 0.0
        for start in range(0, len(xs), 64):
            idx = order[start : start + 64]
            xb = _shift(xs[idx], gen)
            loss = F.cross_entropy(net(xb), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: loss {total / len(xs):.4f}", flush=True)
    return net.eval()


def _shift(xb, gen):
    """Each image moved by -1, 0 or +1 pixel on each axis (zero fill)."""
    import torch
    import torch.nn.functional as F

    padded = F.pad(xb, (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (2, len(xb)), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8] for i in range(len(xb))])


def export(net, path) -> None:
    import torch

    torch.onnx.export(
        net,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        training=torch.onnx.TrainingMode.PRESERVE,
    )


def main(argv: list[str] | None = None) -> int:
    import onnx
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export-only", action="store_true", help="export the saved digits_cnn.pt again, no training")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)

    data = split(args.seed)
    for name, path in (("train", TRAIN), ("calib", CALIB), ("test", TEST)):
        x, y = data[name]
        np.savez_compressed(path, input=x, labels=y)
    if args.export_only:
        net = load_trained()
    else:
        net = train(*data["train"], epochs=args.epochs, seed=args.seed)
        torch.save(net.state_dict(), STATE_DICT)
    export(net, MODEL)

    model = onnx.load(str(MODEL))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    if "BatchNormalization" not in ops:
        raise SystemExit("export folded BatchNormalization away")
    accuracy = onnx_accuracy(MODEL, net, data)
    summary = {
        "accuracy": accuracy,
        "samples": {k: len(v[1]) for k, v in data.items()},
        "seed": args.seed,
        "epochs": args.epochs,
        "width": WIDTH,
        "params": int(sum(p.numel() for p in net.parameters())),
        "ops": {op: ops.count(op) for op in sorted(set(ops))},
        "torch": torch.__version__,
    }
    SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")
    for path in (MODEL, STATE_DICT, TEST, CALIB, TRAIN):
        print(f"wrote {path.name} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
