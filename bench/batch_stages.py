"""CPU time per stage when photos go through the pipeline in batches, as ``facesearch index``'s
workers run them (one torch thread; models loaded; ``time.process_time``).

``bench/profile_pipeline.py`` measures one photo at a time beside OpenCV; this measures the
batched path: ``detect_batch`` of 8 photos, alignment per photo, the embedder on 8 faces.

Usage::

    python bench/batch_stages.py [--shared DIR] [--photos 96] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DEFAULT_SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    p.add_argument("--photos", type=int, default=96, help="first N LFW images (sorted)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from facesearch.image import load_image
    from facesearch.pipeline import FacePipeline, PipelineConfig

    root = args.shared / "data" / "lfw" / "images"
    paths = sorted(root.glob("*/*.jpg"))[: args.photos]
    ims = [load_image(p) for p in paths]
    pipe = FacePipeline(PipelineConfig(threads=1))
    det = pipe.detector
    det.detect_batch(ims[:8])  # warm-up
    for _ in range(args.repeats):
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
            f"{len(ims)} LFW photos, {len(allc)} faces: detect {td:.2f} ms/photo, "
            f"align {ta:.2f} ms/photo, embed {te:.2f} ms/face"
        )


if __name__ == "__main__":
    main()
