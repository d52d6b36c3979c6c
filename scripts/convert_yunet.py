"""Convert the YuNet ONNX file (int8 block-quantized) into the npz that ships in the package.

Run once; the result is committed::

    python scripts/convert_yunet.py                      # default source and destination
    python scripts/convert_yunet.py --onnx path/to/face_detection_yunet_2023mar_int8bq.onnx

What it does, mechanically:

* evaluates every ``DequantizeLinear`` (block-wise: each value is ``(q - zero_point) * scale``
  of its block, blocks contiguous along ``axis``) and ``Reshape`` that feeds a ``Conv``, in
  float32 exactly as onnxruntime does;
* names each of the 53 ``Conv`` nodes after the ``Conv2d`` of
  :class:`facesearch.models.yunet.YuNet` it becomes. Most ONNX weights carry the module name
  (``backbone.model1.conv2.conv1.weight_quantized`` -> ``backbone.model1.conv2.conv1``); the
  anonymous ones (``420``, ``423``, ...: convs whose batch norm the exporter folded in) are the
  stem (it reads the graph input) or the depthwise ``conv2`` after a named ``conv1``. Shapes,
  strides, pads and groups must match the torch layer;
* writes ``yunet_2023mar.npz`` with float32 tensors under the torch ``state_dict`` names, the
  sha256 of the source file and the ONNX name of every tensor (``__meta__``, JSON).

The channel order stays the source's (BGR); :class:`~facesearch.models.yunet.Detector` folds
the RGB->BGR swap into the first convolution when it loads the file.

Needs the ``onnx`` package (a dev dependency); the runtime does not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facesearch.models.yunet import WEIGHTS_FORMAT, YuNet, default_weights_path  # noqa: E402

log = logging.getLogger("convert_yunet")

SOURCE_NAME = "face_detection_yunet_2023mar_int8bq.onnx"
SOURCE_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"


def dequantize_blocked(
    q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int, block_size: int
) -> np.ndarray:
    """ONNX ``DequantizeLinear`` with ``block_size``: ``(q - zp) * scale`` per block, float32.

    ``q`` int8 of any shape; ``scale``/``zero_point`` have the shape of ``q`` except along
    ``axis``, where they hold ``ceil(q.shape[axis] / block_size)`` entries.
    """
    n = q.shape[axis]
    s = np.repeat(scale.astype(np.float32), block_size, axis=axis)
    z = np.repeat(zero_point.astype(np.int32), block_size, axis=axis)
    s = np.take(s, np.arange(n), axis=axis)
    z = np.take(z, np.arange(n), axis=axis)
    return ((q.astype(np.int32) - z).astype(np.float32) * s).astype(np.float32)


def _resolve(name: str, inits: dict[str, np.ndarray], producers: dict) -> tuple[np.ndarray, str]:
    """Value of tensor ``name`` (an initializer, or a DequantizeLinear/Reshape of one).

    Returns the float32 array and the name of the initializer it came from.
    """
    import onnx

    if name in inits:
        return inits[name].astype(np.float32), name
    node = producers[name]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Reshape":
        value, origin = _resolve(node.input[0], inits, producers)
        return value.reshape(inits[node.input[1]]), origin
    if node.op_type == "DequantizeLinear":
        q, scale, zp = (inits[i] for i in node.input)
        axis = int(attrs.get("axis", 1))
        block = int(attrs.get("block_size", 0))
        if block == 0:  # per-tensor / per-axis: broadcast
            shape = [1] * q.ndim
            if scale.size > 1:
                shape[axis] = scale.size
            value = (q.astype(np.int32) - zp.astype(np.int32).reshape(shape)).astype(
                np.float32
            ) * scale.astype(np.float32).reshape(shape)
        else:
            value = dequantize_blocked(q, scale, zp, axis, block)
        return value, node.input[0]
    raise ValueError(f"unexpected op {node.op_type} producing {name!r}")


def _module_name(onnx_name: str) -> str | None:
    """``backbone.model1.conv2.conv1.weight_quantized`` -> ``backbone.model1.conv2.conv1``."""
    for suffix in (".weight_quantized", ".weight", ".bias_quantized", ".bias"):
        if onnx_name.endswith(suffix):
            return onnx_name[: -len(suffix)]
    return None


def convert(onnx_path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read the ONNX file; return the float32 state dict and torch-name -> ONNX-name map."""
    import onnx
    import torch
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]

    layers = {name: m for name, m in YuNet().named_modules() if isinstance(m, torch.nn.Conv2d)}
    if len(layers) != len(convs):
        raise SystemExit(f"graph has {len(convs)} Conv nodes, YuNet has {len(layers)} Conv2d")

    state: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    conv_of_output: dict[str, str] = {}  # ONNX tensor -> torch name of the Conv producing it
    for node in convs:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight, w_origin = _resolve(node.input[1], inits, producers)
        bias, b_origin = _resolve(node.input[2], inits, producers)
        tname = _module_name(w_origin)
        if tname is None:
            # Anonymous: a conv whose batch norm the exporter folded in. Either the stem (it
            # reads the graph input) or the depthwise conv2 of a ConvDPUnit (reads its conv1).
            src = node.input[0]
            if src == graph.input[0].name:
                tname = "backbone.model0.conv1"
            elif conv_of_output.get(src, "").endswith(".conv1"):
                tname = conv_of_output[src][: -len("conv1")] + "conv2"
            else:
                raise SystemExit(f"Conv {node.name}: cannot name anonymous weight {w_origin!r}")
        layer = layers.get(tname)
        if layer is None:
            raise SystemExit(f"Conv {node.name}: no layer {tname!r} in YuNet")
        if f"{tname}.weight" in state:
            raise SystemExit(f"Conv {node.name}: layer {tname!r} assigned twice")
        conv_of_output[node.output[0]] = tname
        assert layer.bias is not None
        checks = {
            "weight shape": (tuple(weight.shape), tuple(layer.weight.shape)),
            "bias shape": (tuple(bias.shape), tuple(layer.bias.shape)),
            "stride": (tuple(attrs.get("strides", [1, 1])), tuple(layer.stride)),
            "groups": (int(attrs.get("group", 1)), layer.groups),
            "pads": (tuple(attrs.get("pads", [0, 0, 0, 0]))[:2], tuple(layer.padding)),
        }
        for what, (a, b) in checks.items():
            if a != b:
                raise SystemExit(f"Conv {node.name} -> {tname}: {what} {a} (ONNX) vs {b} (torch)")
        state[f"{tname}.weight"] = np.ascontiguousarray(weight, dtype=np.float32)
        state[f"{tname}.bias"] = np.ascontiguousarray(bias, dtype=np.float32)
        origin[f"{tname}.weight"] = w_origin
        origin[f"{tname}.bias"] = b_origin
        log.info("%-40s <- %s %s", tname, w_origin, tuple(weight.shape))
    return state, origin


def main(argv: list[str] | None = None) -> int:
    shared = REPO.parent / "shared"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, default=shared / "weights" / SOURCE_NAME)
    parser.add_argument("--out", type=Path, default=default_weights_path())
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)

    data = args.onnx.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha != SOURCE_SHA256:
        raise SystemExit(f"{args.onnx}: sha256 {sha}, expected {SOURCE_SHA256} ({SOURCE_NAME})")
    state, origin = convert(args.onnx)

    # Round trip through the torch module: every key and shape must load strictly.
    import torch

    net = YuNet()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)

    meta = {
        "format": WEIGHTS_FORMAT,
        "source": SOURCE_NAME,
        "source_sha256": sha,
        "input": "BGR, raw 0..255 float, zero-padded bottom/right to a multiple of 32",
        "onnx_names": origin,
    }
    arrays = dict(state)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
        os.chmod(tmp, 0o644)
        os.replace(tmp, args.out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    n_values = sum(v.size for v in state.values())
    print(
        f"wrote {args.out} ({len(state)} tensors, {n_values} values, {args.out.stat().st_size} B)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
