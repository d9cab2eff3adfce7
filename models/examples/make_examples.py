"""Write the bundled example models next to this file.

    python -m models.examples.make_examples [OUT_DIR]

``tiny_resnet.onnx``: ``residual_net(width=16, blocks=3)`` on a ``[1, 3, 64, 64]`` input
(10 classes), seed 0. The output is deterministic, so regenerating gives the same bytes.
"""

from __future__ import annotations

import pathlib
import sys

import onnx

from models.builders import residual_net

HERE = pathlib.Path(__file__).resolve().parent


def examples() -> dict[str, onnx.ModelProto]:
    """File name -> model for every bundled example."""
    return {
        "tiny_resnet.onnx": residual_net(width=16, blocks=3, input_shape=(1, 3, 64, 64), seed=0),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out_dir = pathlib.Path(argv[0]) if argv else HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    for file_name, model in examples().items():
        onnx.checker.check_model(model, full_check=True)
        path = out_dir / file_name
        onnx.save(model, str(path))
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
