"""A large language model's MLP stack, written straight to a file with external data.

``x -> [x + Relu(x @ up_i) @ down_i for each layer] -> output``: the shape of the weights
that dominate a 7B model (24 layers of 4096 x 11008 by default, 4.33 GB in float16). The
weights are generated and written one matrix at a time, in row blocks, so that building a
model larger than memory is possible; only the graph (no data) is ever held as a proto.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

BLOCK_ROWS_BYTES = 8 << 20  # bytes of weights generated at a time
ALIGN = 64 << 10


def weight_bytes(layers: int, hidden: int, ffn: int, dtype=np.float16) -> int:
    """Bytes of weights of :func:`write_mlp_stack` with these sizes."""
    return 2 * layers * hidden * ffn * np.dtype(dtype).itemsize


def write_mlp_stack(
    folder: str | Path,
    *,
    layers: int = 24,
    hidden: int = 4096,
    ffn: int = 11008,
    tokens: int = 4,
    dtype=np.float16,
    seed: int = 0,
    name: str = "mlp_stack.onnx",
) -> Path:
    """Write the model to ``folder/name`` and its weights to ``folder/name.data``; returns the model path.

    Input ``input`` and output ``output`` are ``[1, tokens, hidden]``; weights are
    ``layers.{i}.mlp.up.weight`` ``[hidden, ffn]`` and ``layers.{i}.mlp.down.weight``
    ``[ffn, hidden]``, seeded uniform values scaled so that activations stay in float16 range.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    location = name + ".data"
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "input"
    with open(folder / location, "wb") as data:
        for i in range(layers):
            up, down = f"layers.{i}.mlp.up.weight", f"layers.{i}.mlp.down.weight"
            for wname, rows, cols, std in (
                (up, hidden, ffn, hidden**-0.5),
                (down, ffn, hidden, 0.5 * ffn**-0.5 / layers**0.5),
            ):
                inits.append(_write_weight(data, rng, wname, rows, cols, std, dtype, elem, location))
            p = f"/layers.{i}/mlp"
            nodes += [
                helper.make_node("MatMul", [x, up], [f"{p}/up/MatMul_output_0"], name=f"{p}/up/MatMul"),
                helper.make_node("Relu", [f"{p}/up/MatMul_output_0"], [f"{p}/act/Relu_output_0"], name=f"{p}/act/Relu"),
                helper.make_node(
                    "MatMul", [f"{p}/act/Relu_output_0", down], [f"{p}/down/MatMul_output_0"], name=f"{p}/down/MatMul"
                ),
                helper.make_node(
                    "Add",
                    [x, f"{p}/down/MatMul_output_0"],
                    ["output" if i == layers - 1 else f"/layers.{i}/Add_output_0"],
                    name=f"/layers.{i}/Add",
                ),
            ]
            x = nodes[-1].output[0]
    graph = helper.make_graph(
        nodes,
        "mlp_stack",
        [helper.make_tensor_value_info("input", elem, [1, tokens, hidden])],
        [helper.make_tensor_value_info("output", elem, [1, tokens, hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="models.llm_mlp")
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def _write_weight(data, rng, name, rows, cols, std, dtype, elem, location) -> TensorProto:
    if data.tell() % ALIGN:
        data.write(b"\0" * (ALIGN - data.tell() % ALIGN))
    offset = data.tell()
    step = max(1, BLOCK_ROWS_BYTES // (cols * np.dtype(dtype).itemsize))
    for r in range(0, rows, step):
        block = rng.random((min(step, rows - r), cols), dtype=np.float32)  # uniform: cheap to draw
        block -= 0.5
        block *= std * 12**0.5  # standard deviation std
        data.write(block.astype(dtype).tobytes())
    t = TensorProto()
    t.name, t.data_type = name, elem
    t.dims.extend([rows, cols])
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(data.tell() - offset))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def reference_output(path: str | Path, feeds: np.ndarray) -> np.ndarray:
    """The model's output computed with numpy (float32 accumulation) from its weight file:
    an independent check of what onnxruntime computes from a (pruned) file."""
    model = onnx.load(str(path), load_external_data=False)
    base = Path(path).parent
    w = {}
    for t in model.graph.initializer:
        info = {e.key: e.value for e in t.external_data}
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
        w[t.name] = np.memmap(
            base / info["location"], dtype=dtype, mode="r", offset=int(info["offset"]), shape=tuple(t.dims)
        )
    x = feeds.astype(np.float32)
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1].endswith("up.weight"):
            h = np.maximum(x @ np.asarray(w[node.input[1]], np.float32), 0)
        elif node.op_type == "MatMul":
            x = x + h @ np.asarray(w[node.input[1]], np.float32)
    return x
