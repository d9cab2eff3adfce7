"""Train the digits ViT and write the bundled example files next to this module.

    pip install -e ".[train]"
    python -m models.examples.digits_vit.train [--epochs N] [--seed S]

1. Read the digits CNN's split (``models/examples/digits/digits_{train,calib,test}.npz``): the
   ViT is trained and measured on exactly the CNN's data, so the two examples compare.
2. Train :func:`net.digits_vit` on the train split (CPU, seeded, one thread, deterministic
   algorithms, random one-pixel shifts as augmentation); a few minutes on one core.
3. Export ONNX with torch's default exporter (``dynamo=True``, opset 18, weights inline) for a
   batch of 1 (fixed, as the CNN's: MACs are counted from inferred shapes). Its graph is the
   standard decomposition (MatMul + Add per linear, Reshape/Transpose head split, Softmax,
   Erf GELU, LayerNormalization), where graphprune finds every block's heads and MLP width.
   Not used: ``F.scaled_dot_product_attention`` exported at opset 23 becomes one ONNX
   ``Attention`` node (its heads prune too, ``graphprune/rules/attention.py``, but opset 18
   is the exporter's default); the legacy TorchScript exporter (``dynamo=False``) gives the
   same prunable groups but adds Shape/ConstantOfShape/Where/Expand around the class token.
4. Check the ONNX model in onnxruntime: its predictions on every split must equal torch's;
   check that graphprune's analysis finds 3 head groups and 3 MLP groups prunable; record
   the accuracies in ``digits_vit.json``.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .. import onnx_accuracy
from . import CALIB, MODEL, SUMMARY, TEST, TRAIN
from .net import DEPTH, DIM, HEADS, MLP_RATIO, PATCH, digits_vit


def load_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Split name -> (inputs float32 [N, 1, 8, 8], labels int64 [N]), from the CNN's files."""
    out = {}
    for name, path in (("train", TRAIN), ("calib", CALIB), ("test", TEST)):
        with np.load(path) as npz:
            out[name] = (npz["input"], npz["labels"])
    return out


def train(x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int, lr: float):
    import torch
    import torch.nn.functional as F

    from ..digits.train import _shift

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    net = digits_vit()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = -(-len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(xs), generator=gen)
        total = 0.0
        for start in range(0, len(xs), 64):
            idx = order[start : start + 64]
            loss = F.cross_entropy(net(_shift(xs[idx], gen)), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: loss {total / len(xs):.4f}", flush=True)
    return net.eval()


def export(net, path) -> None:
    import torch

    torch.onnx.export(
        net,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        dynamo=True,
        opset_version=18,
        external_data=False,
        input_names=["input"],
        output_names=["logits"],
        verbose=False,
    )
    # The exporter records each node's Python stack trace, paths of this checkout included:
    # dropped, so the file is the same on every machine (the other metadata stays).
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        keep = [(p.key, p.value) for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        for key, value in keep:
            node.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def main(argv: list[str] | None = None) -> int:
    import onnx
    import torch

    import graphprune

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)

    data = load_split()
    net = train(*data["train"], epochs=args.epochs, seed=args.seed, lr=args.lr)
    export(net, MODEL)

    model = onnx.load(str(MODEL))
    onnx.checker.check_model(model, full_check=True)
    units = sorted(g.unit for g in graphprune.analyze(model).prunable_groups())
    if units != ["heads"] * DEPTH + ["mlp"] * DEPTH:
        raise SystemExit(f"graphprune finds prunable {units}, expected {DEPTH} heads and {DEPTH} mlp groups")
    accuracy = onnx_accuracy(MODEL, net, data)
    ops = [n.op_type for n in model.graph.node]
    summary = {
        "accuracy": accuracy,
        "samples": {k: len(v[1]) for k, v in data.items()},
        "seed": args.seed,
        "epochs": args.epochs,
        "lr": args.lr,
        "dim": DIM,
        "depth": DEPTH,
        "heads": HEADS,
        "mlp_ratio": MLP_RATIO,
        "patch": PATCH,
        "params": int(sum(p.numel() for p in net.parameters())),
        "ops": {op: ops.count(op) for op in sorted(set(ops))},
        "torch": torch.__version__,
    }
    SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {MODEL.name} ({MODEL.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
