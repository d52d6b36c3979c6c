"""CPU time per stage when photos go through the pipeline in batches, as ``facesearch index``'s
workers run them (one thread; models loaded; ``time.process_time``), for both engines: the numpy
engine with the native kernels (what ``facesearch index`` runs) and PyTorch, taken in turn.

``bench/profile_pipeline.py`` measures one photo at a time beside OpenCV; this measures the
batched path: ``detect_batch`` of 8 photos, alignment per photo, the embedder on 8 faces.

Usage::

    python bench/batch_stages.py [--shared DIR] [--photos 96] [--repeats 2] [--engine numpy]
    python bench/batch_stages.py --sface-layers        # PyTorch's SFace layer by layer
    python bench/batch_stages.py --stem [--repeats 6]
    python bench/batch_stages.py --numpy-stem [--repeats 4]

``--numpy-stem``: the numpy engine's SFace with its stem in chunks of 0 (the whole batch), 1, 2
and 4 crops (``npengine._STEM_CHUNK``): two threads each embedding batches of 8 crops at once,
faces/s (wall), ``--repeats`` rounds, medians.

``--sface-layers`` also times SFace layer by layer on those faces (batches of 8): the
convolution and the PReLU of each of the 27 layers, and the PReLUs' share of the total.

``--stem`` measures the embedder as the indexer's workers run it: two threads each embedding
64 crops in batches of 8 at once (faces/s, wall) and one thread alone (CPU-ms per face), for
three settings run in turn ``--repeats`` times (medians): the whole batch through the stem and
``torch.prelu``; the stem in chunks of ``STEM_CHUNK`` crops; and the chunks with the native
in-place PReLU (``facesearch.models.kernels``), which is what ``facesearch index`` runs.
As in ``facesearch index``, glibc's allocator is tuned first (``facesearch.process.tune_malloc``):
without it the whole-batch setting would also pay page faults for its 26 MB activations.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    p.add_argument("--photos", type=int, default=96, help="first N LFW images (sorted)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sface-layers", action="store_true", help="time SFace layer by layer")
    p.add_argument("--stem", action="store_true", help="stem chunks and native PReLU, A/B")
    p.add_argument("--numpy-stem", action="store_true", help="numpy engine's stem chunks, A/B")
    p.add_argument("--engine", choices=["numpy", "torch", "both"], default="both")
    args = p.parse_args()
    if args.stem:
        stem_ab(args.repeats)
        return
    if args.numpy_stem:
        numpy_stem_ab(args.repeats)
        return

    from facesearch.image import load_image
    from facesearch.models.npengine import single_threaded_blas
    from facesearch.pipeline import FacePipeline, PipelineConfig

    root = args.shared / "data" / "lfw" / "images"
    paths = sorted(root.glob("*/*.jpg"))[: args.photos]
    ims = [load_image(p) for p in paths]
    engines = ["numpy", "torch"] if args.engine == "both" else [args.engine]
    if args.sface_layers and "torch" not in engines:
        raise SystemExit("--sface-layers times PyTorch's SFace: use --engine torch or both")
    pipes = {e: FacePipeline(PipelineConfig(threads=1, engine=e)) for e in engines}
    if "torch" in pipes:
        import torch

        torch.set_num_threads(1)
    with single_threaded_blas():
        for _ in range(args.repeats):
            for engine, pipe in pipes.items():
                stages(engine, pipe, ims, args.sface_layers and engine == "torch")


def stages(engine: str, pipe: Any, ims: list[np.ndarray], layers: bool) -> None:
    """Detection, alignment and embedding of ``ims`` in batches of 8, CPU-ms per photo/face."""
    det = pipe.detector
    det.detect_batch(ims[:8])  # warm-up
    t = time.process_time()
    for i in range(0, len(ims), 8):
        det.detect_batch(ims[i : i + 8])
    td = (time.process_time() - t) / len(ims) * 1e3
    dets = det.detect_batch(ims)
    t = time.process_time()
    crops = [pipe.align(im, ds) for im, ds in zip(ims, dets, strict=True)]
    ta = (time.process_time() - t) / len(ims) * 1e3
    allc = np.concatenate(crops)
    t = time.process_time()
    for i in range(0, len(allc), 8):
        pipe.embed(allc[i : i + 8])
    te = (time.process_time() - t) / len(allc) * 1e3
    print(
        f"{engine:5s} {len(ims)} LFW photos, {len(allc)} faces: detect {td:.2f} ms/photo, "
        f"align {ta:.2f} ms/photo, embed {te:.2f} ms/face"
    )
    if layers:
        sface_layers(pipe, allc)


def sface_layers(pipe: object, crops: np.ndarray) -> None:
    """Convolution and PReLU time of every SFace layer (the embedder's fused network)."""
    import torch

    from facesearch.models.sface import INPUT_MEAN, INPUT_SCALE
    from facesearch.models.yunet import pointwise

    net = pipe.embedder._runner  # type: ignore[attr-defined]
    layers = list(net.features)
    pairs = list(zip(layers[::2], layers[1::2], strict=True))
    conv_s, prelu_s = np.zeros(len(pairs)), np.zeros(len(pairs))
    n = 0
    with torch.inference_mode():
        for i in range(0, len(crops) - 7, 8):
            x = torch.from_numpy(np.ascontiguousarray(crops[i : i + 8])).permute(0, 3, 1, 2)
            h = (x.float() - INPUT_MEAN) * INPUT_SCALE
            for k, (conv, act) in enumerate(pairs):
                t0 = time.process_time()
                is_1x1 = conv.kernel_size == (1, 1)
                h = pointwise(h, conv.weight, conv.bias) if is_1x1 else conv(h)
                t1 = time.process_time()
                h = act(h)
                conv_s[k] += t1 - t0
                prelu_s[k] += time.process_time() - t1
            n += 8
    total = conv_s.sum() + prelu_s.sum()
    print(
        f"SFace by layer, {n} faces in batches of 8: convolutions {conv_s.sum() / n * 1e3:.2f} "
        f"ms/face, PReLUs {prelu_s.sum() / n * 1e3:.2f} ms/face "
        f"({100 * prelu_s.sum() / total:.1f} % of the layers' time)"
    )


def stem_ab(repeats: int) -> None:
    """Embedder throughput with and without the chunked stem and the native PReLU."""
    import threading

    import torch

    import facesearch.models.kernels as kernels
    import facesearch.models.sface as sface
    from facesearch.process import tune_malloc

    tune_malloc()  # as the pipeline does: activations stay in the heap
    torch.set_num_threads(1)
    emb = sface.Embedder()
    native, chunk = kernels._NATIVE, sface.STEM_CHUNK
    if native is None:
        raise SystemExit("facesearch._native is not built: pip install -e . first")
    crops = np.random.default_rng(0).integers(0, 256, (64, 112, 112, 3), dtype=np.uint8)
    settings = {
        "whole batch, torch.prelu": (emb.batch_size, None),
        f"stem in chunks of {chunk}, torch.prelu": (chunk, None),
        f"stem in chunks of {chunk}, native PReLU": (chunk, native),
    }

    def work() -> None:
        for i in range(0, len(crops), 8):
            emb.embed(crops[i : i + 8])

    one: dict[str, list[float]] = {k: [] for k in settings}
    two: dict[str, list[float]] = {k: [] for k in settings}
    try:
        for c, n in settings.values():  # warm-up
            sface.STEM_CHUNK, kernels._NATIVE = c, n
            work()
        for _ in range(repeats):
            for name, (c, n) in settings.items():
                sface.STEM_CHUNK, kernels._NATIVE = c, n
                t = time.process_time()
                work()
                one[name].append((time.process_time() - t) / len(crops) * 1e3)
                threads = [threading.Thread(target=work) for _ in range(2)]
                t = time.perf_counter()
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                two[name].append(2 * len(crops) / (time.perf_counter() - t))
    finally:
        sface.STEM_CHUNK, kernels._NATIVE = chunk, native
    print(f"SFace, batches of 8 crops, median of {repeats}:")
    for name in settings:
        print(
            f"  {name:40s} 2 threads {np.median(two[name]):6.1f} faces/s   "
            f"1 thread {np.median(one[name]):6.2f} CPU-ms/face"
        )


if __name__ == "__main__":
    main()


def numpy_stem_ab(repeats: int) -> None:
    """The numpy engine's SFace, two threads at once, with its stem in chunks of 0/1/2/4 crops."""
    import os
    import threading

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from facesearch.models import npengine
    from facesearch.models.sface_weights import WEIGHTS_FILE
    from facesearch.process import tune_malloc

    tune_malloc()
    if npengine._NATIVE is None:
        raise SystemExit("facesearch._native is not built: pip install -e . first")
    net = npengine.NumpySFace(npengine._load_prepared_sface(WEIGHTS_FILE))  # one thread
    rng = np.random.default_rng(0)
    batches = [(rng.random((8, 112, 112, 3)) * 255).astype(np.float32) for _ in range(2)]
    rounds = 10
    before = npengine._STEM_CHUNK
    got: dict[int, list[float]] = {}
    try:
        with npengine.single_threaded_blas():
            for _ in range(repeats):
                for chunk in (0, 1, 2, 4):
                    npengine._STEM_CHUNK = chunk

                    def work(x: np.ndarray) -> None:
                        for _ in range(rounds):
                            net(x)

                    threads = [threading.Thread(target=work, args=(x,)) for x in batches]
                    t = time.perf_counter()
                    for th in threads:
                        th.start()
                    for th in threads:
                        th.join()
                    faces = len(batches) * rounds * 8
                    got.setdefault(chunk, []).append(faces / (time.perf_counter() - t))
    finally:
        npengine._STEM_CHUNK = before
    for chunk, v in got.items():
        name = "whole batch" if chunk == 0 else f"chunks of {chunk}"
        runs = ", ".join(f"{x:.1f}" for x in v)
        print(f"stem {name:13s}: {float(np.median(v)):.1f} faces/s median ({runs})")
