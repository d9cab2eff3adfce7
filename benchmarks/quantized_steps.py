"""How many quantization steps a correct surgery moves a QDQ model's outputs, and a wrong one.

    python -m benchmarks.quantized_steps [--models resnet18 resnet50 mobilenet_v2]
                                         [--ratios 0.1 0.3 0.5 0.7] [--seeds 4]

Each zoo skeleton (random weights drawn from its stored statistics) is quantized by
``onnxruntime.quantization.quantize_static`` (QDQ, per channel, uint8 activations, int8
weights; calibrated on four random batches), pruned by l2 and random filters at each ratio,
and compared with its masked reference on ``--seeds`` random inputs: the largest output
difference in steps of the output's quantization step (``QUANT_STEPS`` in
``graphprune/validation/quantized.py`` is the bound these measurements justify). Then, per model, two
input channels of each fifth int8 Conv weight of the pruned model are swapped (a wrong
surgery) and the same difference is printed with the comparison with fake quantization
bypassed, which exactness also holds to the float tolerance.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

import graphprune
from graphprune.objectives.cost import random_feeds
from graphprune.validation.contract import masked_reference_bytes, rel_diff, run
from graphprune.validation.quantized import fake_quant_bypassed, output_steps
from models import zoo


def quantize(name: str, folder: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = zoo.load(name)
    src, pre, dst = folder / f"{name}.onnx", folder / f"{name}.pre.onnx", folder / f"{name}.qdq.onnx"
    onnx.save(model, src)
    quant_pre_process(str(src), str(pre))
    inp = model.graph.input[0]
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    return onnx.load(dst)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "mobilenet_v2"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7])
    ap.add_argument("--seeds", type=int, default=4)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            q = quantize(name, Path(tmp))
            (step,) = output_steps(q)[:1]
            worst = 0.0
            for criterion in ("l2", "random"):
                for ratio in args.ratios:
                    result = graphprune.prune(q, ratio=ratio, criterion=criterion, validate=False)
                    ref = masked_reference_bytes(q, result.deps, result.plan)
                    diffs = []
                    for seed in range(args.seeds):
                        feeds = random_feeds(q, seed=seed)
                        a, b = run(result.model, feeds)[0], run(ref, feeds)[0]
                        diffs.append(float(np.max(np.abs(a.astype(np.float64) - b))) / step)
                    worst = max(worst, *diffs)
                    print(f"{name} {criterion} ratio {ratio}: steps {[round(d, 2) for d in diffs]}")
            print(f"{name}: largest difference {worst:.2f} steps of {step:.4g}")
            result = graphprune.prune(q, ratio=0.3, validate=False)
            feeds = random_feeds(q)
            with fake_quant_bypassed(q):
                ref_float = run(masked_reference_bytes(q, result.deps, result.plan), feeds)
            ref = run(masked_reference_bytes(q, result.deps, result.plan), feeds)
            weights = [t for t in result.model.graph.initializer if len(t.dims) == 4 and t.dims[1] > 2]
            for t in weights[::5]:
                wrong = onnx.ModelProto()
                wrong.CopyFrom(result.model)
                w = numpy_helper.to_array(t).copy()
                w[:, [0, 1]] = w[:, [1, 0]]
                init = next(x for x in wrong.graph.initializer if x.name == t.name)
                init.CopyFrom(numpy_helper.from_array(w, t.name))
                steps = float(np.max(np.abs(run(wrong, feeds)[0].astype(np.float64) - ref[0]))) / step
                with fake_quant_bypassed(wrong):
                    bypassed = rel_diff(run(wrong, feeds), ref_float)
                print(f"{name} wrong {t.name}: {steps:.2f} steps, bypassed rel diff {bypassed:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
