#!/usr/bin/env python
"""Convert the SFace ONNX model into the weight file shipped in ``facesearch/models/weights``.

Run once (needs the ``onnx`` package, a dev dependency; the runtime does not)::

    python scripts/convert_sface.py [--onnx SRC.onnx] [--out DST.npz] [--check]

The output is an uncompressed-member ``.npz`` (readable with ``np.load(allow_pickle=False)``)
holding every initializer the graph uses, under its ONNX name, unchanged: int8 weights with their
float32 per-block scales and int8 zero points, float batch-norm and PReLU parameters. The
``DequantizeLinear`` attributes become ``<base>_axis`` and ``<base>_block_size`` entries, and a
``__meta__`` entry (UTF-8 JSON) records the format, the source file and its sha256, and the input
convention. Members are written in sorted order with a fixed timestamp, so the file is
byte-for-byte reproducible.

``--check`` (needs onnxruntime) verifies the result against the source: the dequantized weights
must equal onnxruntime's ``DequantizeLinear`` outputs bit for bit, and the torch model must agree
with onnxruntime on random inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "weights" / "face_recognition_sface_2021dec_int8bq.onnx"
DEFAULT_OUT = REPO / "facesearch" / "models" / "weights" / "sface_2021dec_int8bq.npz"

logger = logging.getLogger("convert_sface")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def extract(src: Path) -> dict[str, np.ndarray]:
    """The initializers the graph uses, plus DequantizeLinear attributes, by ONNX name."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    used = {name for node in graph.node for name in node.input}
    arrays: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        if init.name in used or init.name.endswith("_shape"):
            arrays[init.name] = numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        base = node.input[0].removesuffix("_quantized")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        arrays[f"{base}_axis"] = np.array(attrs.get("axis", 1), dtype=np.int64)
        arrays[f"{base}_block_size"] = np.array(attrs["block_size"], dtype=np.int64)
    # The graph's own input scaling must be what facesearch.models.sface hard-codes.
    if float(arrays["scalar_op1"][0]) != 127.5 or float(arrays["scalar_op2"][0]) != 0.0078125:
        raise SystemExit(f"unexpected input scaling {arrays['scalar_op1']} {arrays['scalar_op2']}")
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as a reproducible ``.npz`` (sorted members, fixed timestamp), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            for name in sorted(arrays):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arrays[name].copy(order="C"), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check(src: Path, out: Path) -> None:
    """Compare the converted weights and the torch model with onnxruntime on the source graph."""
    import onnx
    import onnxruntime as ort
    import torch

    sys.path.insert(0, str(REPO))
    from facesearch.models.sface import (
        LAYERS,
        load_sface,
        read_weights,
        state_dict_from_onnx_arrays,
    )

    model = onnx.load(str(src))
    graph = model.graph
    keep = [i for i in graph.input if i.name == "data"]
    del graph.input[:]
    graph.input.extend(keep)  # the file lists 29 unused float inputs that ORT refuses
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "N"  # any batch size
    deq = [n.output[0] for n in graph.node if n.op_type in ("DequantizeLinear", "Reshape")]
    graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in deq)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(4, 3, 112, 112)).astype(np.float32)
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"data": x}), strict=True))

    _, arrays = read_weights(out)
    sd = state_dict_from_onnx_arrays(arrays)
    pairs = [(f"{s.name}.conv2d.weight", f"{s.name}_conv2d_weight_reshaped") for s in LAYERS]
    pairs += [
        ("pre_fc1.weight", "pre_fc1_weight_dequantized"),
        ("pre_fc1.bias", "pre_fc1_bias_dequantized"),
    ]
    for key, onnx_name in pairs:
        if not np.array_equal(sd[key].numpy(), outs[onnx_name]):
            raise SystemExit(f"dequantized {key} differs from onnxruntime")
    logger.info("dequantized weights: %d tensors bit-identical to onnxruntime", len(pairs))

    net = load_sface(out)
    with torch.inference_mode():
        y = net(torch.from_numpy(x)).numpy()
        yf = net.fused()(torch.from_numpy(x)).numpy()
    ref = outs[graph.output[0].name]
    for label, ours in (("unfused", y), ("fused", yf)):
        cos = np.sum(ours * ref, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
        logger.info(
            "%s torch vs onnxruntime: max abs %.2e (feature norm %.1f), min cosine %.9f",
            label,
            np.abs(ours - ref).max(),
            np.linalg.norm(ref, axis=1).mean(),
            cos.min(),
        )
        if cos.min() < 0.99999:
            raise SystemExit(f"{label} torch model disagrees with onnxruntime")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, default=DEFAULT_SRC, help="source ONNX file")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="weight file to write")
    parser.add_argument("--check", action="store_true", help="verify against onnxruntime")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    arrays = extract(args.onnx)
    meta = {
        "format": "facesearch-sface-int8bq/1",
        "source": args.onnx.name,
        "source_sha256": sha256(args.onnx),
        "licence": "Apache-2.0 (OpenCV Zoo), see LICENSE-sface.txt",
        "input_size": 112,
        "input_channels": "RGB",
        "input_mean": 127.5,
        "input_scale": 0.0078125,
        "embedding_dim": 128,
    }
    arrays["__meta__"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    write_npz(args.out, arrays)
    logger.info("wrote %s: %d arrays, %d bytes", args.out, len(arrays), args.out.stat().st_size)
    if args.check:
        check(args.onnx, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
