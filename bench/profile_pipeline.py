"""Where facesearch's indexing time goes, stage by stage, beside OpenCV doing the same stages.

On the same photos (a spread of the ``speed.py`` input sets), with **one thread**, it measures
the CPU time (``time.process_time``: robust to other load on a shared machine, unlike wall
time) of each stage:

==========  =====================================  =====================================
stage       facesearch                             OpenCV (``bench/alternatives.py``)
==========  =====================================  =====================================
decode      ``facesearch.image.load_image``        ``cv2.imread``
detect      ``Detector.detect_batch([image])``     ``setInputSize`` + ``FaceDetectorYN.detect``
align       ``FacePipeline.align``                 ``FaceRecognizerSF.alignCrop`` per face
embed       ``FacePipeline.embed`` (all faces)     ``FaceRecognizerSF.feature`` per face
==========  =====================================  =====================================

and, with ``--cprofile``, the functions that take the most CPU time inside facesearch (cProfile
with a CPU clock). Results go into the ``profile`` section of ``bench/results/speed.md``.

Usage::

    python bench/profile_pipeline.py --quick          # 40 LFW + 10 photos
    python bench/profile_pipeline.py --cprofile       # 200 LFW + 40 photos, with cProfile
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import logging
import pstats
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import (  # noqa: E402
    DEFAULT_SHARED,
    REPO,
    lfw_selection,
    photos_selection,
    quick_subset,
    update_results,
)

log = logging.getLogger("bench.profile")
STAGES = ("decode", "detect", "align", "embed")


class _Clock:
    """Accumulates CPU seconds per stage: ``with clock("detect"): ...``."""

    def __init__(self) -> None:
        self.cpu_s = dict.fromkeys(STAGES, 0.0)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t = time.process_time()
        try:
            yield
        finally:
            self.cpu_s[stage] += time.process_time() - t


def profile_facesearch(paths: Sequence[str]) -> dict[str, Any]:
    """CPU seconds per stage of the facesearch pipeline over ``paths`` (one photo at a time)."""
    from facesearch.image import load_image
    from facesearch.pipeline import FacePipeline, PipelineConfig

    pipe = FacePipeline(PipelineConfig(threads=1))
    pipe.faces(load_image(paths[0]))  # warm-up
    clock = _Clock()
    faces = 0
    for p in paths:
        with clock("decode"):
            img = load_image(p)
        with clock("detect"):
            dets = pipe.detector.detect_batch([img])[0]
        with clock("align"):
            crops = pipe.align(img, dets)
        with clock("embed"):
            pipe.embed(crops)
        faces += len(dets)
    return {"cpu_s": clock.cpu_s, "faces": faces, "photos": len(paths)}


def profile_opencv(paths: Sequence[str], weights: Path) -> dict[str, Any]:
    """CPU seconds per stage of OpenCV's YuNet + SFace over ``paths``."""
    import cv2
    from alternatives import OpenCVPipeline

    system = OpenCVPipeline(weights, threads=1)
    det, rec = system.detector, system.recognizer
    clock = _Clock()
    faces = 0
    for p in paths:
        with clock("decode"):
            bgr = cv2.imread(p, cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"{p}: OpenCV cannot decode this file")
        with clock("detect"):
            det.setInputSize((bgr.shape[1], bgr.shape[0]))
            found = det.detect(bgr)[1]
        rows = [] if found is None else list(found)
        with clock("align"):
            crops = [rec.alignCrop(bgr, r) for r in rows]
        with clock("embed"):
            for x in crops:
                rec.feature(x)
        faces += len(rows)
    system.close()
    return {"cpu_s": clock.cpu_s, "faces": faces, "photos": len(paths)}


def cprofile_facesearch(paths: Sequence[str], top: int) -> list[tuple[str, float, float, int]]:
    """``[(function, own CPU s, cumulative CPU s, calls)]`` of ``pipe.faces`` over ``paths``."""
    from facesearch.image import load_image
    from facesearch.pipeline import FacePipeline, PipelineConfig

    pipe = FacePipeline(PipelineConfig(threads=1))
    pipe.faces(load_image(paths[0]))
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    for p in paths:
        pipe.faces(load_image(p))
    prof.disable()
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        where = Path(file).name if file != "~" else ""
        rows.append((f"{where}:{line}({fn})" if where else fn, tt, ct, nc))
    rows.sort(key=lambda r: -r[1])
    return rows[:top]


def render(payload: dict[str, Any]) -> str:
    lines = [
        "## Profile: CPU time per stage (1 thread), facesearch vs OpenCV",
        "",
        f"Command: `{payload['command']}`  ",
        f"Date: {payload['date']}. CPU time (`time.process_time`) per photo in ms, one photo at "
        "a time, models loaded; same photos for both.",
        "",
    ]
    for inputs, sect in payload["sets"].items():
        fs, cv = sect["facesearch"], sect["opencv"]
        n = fs["photos"]
        lines += [
            f"### {inputs}: {n} photos ({fs['faces']} faces found by facesearch, "
            f"{cv['faces']} by OpenCV)",
            "",
            "| stage | facesearch ms/photo | OpenCV ms/photo | facesearch / OpenCV |",
            "|---|---:|---:|---:|",
        ]
        for stage in (*STAGES, "total"):
            a = sum(fs["cpu_s"].values()) if stage == "total" else fs["cpu_s"][stage]
            b = sum(cv["cpu_s"].values()) if stage == "total" else cv["cpu_s"][stage]
            ratio = f"{a / b:.2f}" if b > 0 else "–"
            lines.append(f"| {stage} | {1e3 * a / n:.1f} | {1e3 * b / n:.1f} | {ratio} |")
        lines.append("")
    if payload.get("cprofile"):
        lines += [
            "Top functions by own CPU time (cProfile, CPU clock, `pipe.faces`, same photos):",
            "",
            "| function | own s | cumulative s | calls |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| `{f}` | {tt:.2f} | {ct:.2f} | {nc} |" for f, tt, ct, nc in payload["cprofile"]
        ]
        lines.append("")
    if payload.get("notes"):
        lines += [payload["notes"].rstrip(), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shared", default=str(DEFAULT_SHARED))
    p.add_argument("--quick", action="store_true", help="40 LFW + 10 photos; printed only")
    p.add_argument("--lfw", type=int, default=200, help="LFW photos (spread over the 2,000)")
    p.add_argument("--photos", type=int, default=40, help="photos of photos/ + groups/")
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--notes", default="", help="text (markdown) appended to the section")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.quick:
        args.lfw, args.photos = 40, 10
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    data = Path(args.shared) / "data"
    sets = {
        "lfw": [str(data / "lfw" / "images" / r)
                for r in quick_subset(lfw_selection(data, 2000), args.lfw)],
        "photos": [str(data / r) for r in quick_subset(photos_selection(data), args.photos)],
    }  # fmt: skip
    payload: dict[str, Any] = {
        "command": shlex.join(["python", "bench/profile_pipeline.py", *argv]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "sets": {},
    }
    for name, paths in sets.items():
        payload["sets"][name] = {
            "facesearch": profile_facesearch(paths),
            "opencv": profile_opencv(paths, Path(args.shared) / "weights"),
        }
        log.info("%s done", name)
    if args.cprofile:
        payload["cprofile"] = cprofile_facesearch(sets["lfw"] + sets["photos"], args.top)
    payload["notes"] = args.notes
    payload["markdown"] = render(payload)
    print(payload["markdown"])
    if not args.quick:
        update_results("profile", payload)


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    main()
