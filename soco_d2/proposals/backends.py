"""Segmentation backends behind one interface, in a detectron2 ``Registry``.

A backend is built from plain keyword parameters (``build_backend(name,
**params)``), reports them canonically (``.params``, stored in the cache
header) and maps an RGB uint8 image to either integer XYXY boxes in that
image's pixels (``kind == "boxes"``) or an integer label map (``"masks"``).
Resizing, mapping back and filtering are not the backend's job
(:mod:`soco_d2.proposals.generate`).

Backends
--------
* ``opencv_ss``: OpenCV-contrib ``ximgproc`` selective search, modes ``fast``
  / ``quality`` (OpenCV's presets from Uijlings et al.), ``single`` (one colour
  space, one graph segmentation, one combined strategy: the structure of the
  official SoCo tool) and ``custom`` (any colour spaces / k values / strategies).
* ``selectivesearch``: the pure-Python ``selectivesearch`` PyPI package, the
  algorithm the official SoCo tool copies (reference behaviour, slow).
* ``skimage_fh``: scikit-image ``felzenszwalb`` (DetCon's generator).
* ``opencv_fh``: OpenCV's graph segmentation (the same Felzenszwalb-Huttenlocher
  algorithm in C++; faster, not identical to scikit-image's).
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import warnings

import cv2
import numpy as np
from detectron2.utils.registry import Registry

from .boxes import cv_rects_to_xyxy, official_rects_to_xyxy

PROPOSAL_BACKEND_REGISTRY = Registry("PROPOSAL_BACKEND")
PROPOSAL_BACKEND_REGISTRY.__doc__ = "Selective-search / Felzenszwalb backends, built by name with keyword parameters."

# Which backends serve which --method.
METHOD_BACKENDS = {
    "selective_search": ("opencv_ss", "selectivesearch"),
    "felzenszwalb": ("skimage_fh", "opencv_fh"),
}


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _opencv_version() -> str:
    return cv2.__version__


class Backend:
    """Base class: ``params`` is the canonical parameter dict, ``kind`` the output kind."""

    kind = "boxes"
    # Size-like parameters scaled with the image when ``scale_params`` is on:
    # name -> exponent of the resize factor (areas: 2, lengths: 1).
    SIZE_PARAMS: dict = {}

    def __init__(self, **params):
        self.params = dict(params)

    def scaled(self, factor: float) -> "Backend":
        """The same backend with size-like parameters scaled for an image resized by ``factor``."""
        if factor == 1.0 or not self.SIZE_PARAMS:
            return self
        p = dict(self.params)
        for name, exponent in self.SIZE_PARAMS.items():
            value = p[name] * factor**exponent
            p[name] = max(1, int(round(value))) if isinstance(p[name], int) else float(value)
        return type(self)(**p)

    @staticmethod
    def versions() -> dict:
        return {}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError


# ----------------------------------------------------------------- OpenCV SS
_COLOR_SPACES = {
    "hsv": lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV),
    "lab": lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2Lab),
    "rgb": lambda bgr: np.ascontiguousarray(bgr[:, :, ::-1]),
    "gray": lambda bgr: cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY),
    "hue": lambda bgr: np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)[:, :, 0]),
    "rgi": lambda bgr: np.ascontiguousarray(
        np.dstack([bgr[:, :, 2], bgr[:, :, 1], cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)])
    ),
}
_STRATEGIES = {
    "c": "createSelectiveSearchSegmentationStrategyColor",
    "f": "createSelectiveSearchSegmentationStrategyFill",
    "t": "createSelectiveSearchSegmentationStrategyTexture",
    "s": "createSelectiveSearchSegmentationStrategySize",
}
_libc = None


def _seed_libc_rand(seed: int) -> None:
    """OpenCV ranks regions with libc ``rand()`` (process-global state), so the
    order of its output would depend on what the process computed before;
    seeding it before every image makes each image's result history-free."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None)
            _libc.srand.argtypes = [ctypes.c_uint]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.srand(seed)


@PROPOSAL_BACKEND_REGISTRY.register()
class OpenCVSelectiveSearch(Backend):
    """OpenCV-contrib ``ximgproc.segmentation`` selective search.

    ``k``/``inc_k``/``sigma`` are OpenCV's ``base_k``/``inc_k``/``sigma`` for
    ``fast`` (k, k+inc, k+2inc; HSV+Lab; 2 strategies) and ``quality`` (5 ks,
    5 colour spaces, 4 strategies); ``single`` and ``custom`` also honour
    ``min_size`` (OpenCV's presets fix it at 100), ``color_spaces``,
    ``num_k`` and ``strategies`` (each a combination of c=colour, f=fill,
    t=texture, s=size, combined with equal weights).
    """

    SIZE_PARAMS = {"k": 2, "inc_k": 2, "min_size": 2, "sigma": 1}

    def __init__(self, mode="single", k=300, inc_k=150, sigma=0.9, min_size=100, color_spaces=("hsv",),
                 num_k=1, strategies=("cfts",), seed=0):
        if mode not in ("fast", "quality", "single", "custom"):
            raise ValueError(f"opencv_ss mode must be fast, quality, single or custom, not {mode!r}")
        for cs in color_spaces:
            if cs not in _COLOR_SPACES:
                raise ValueError(f"unknown colour space {cs!r}; choose from {', '.join(_COLOR_SPACES)}")
        for st in strategies:
            if not st or set(st) - set(_STRATEGIES) or len(set(st)) != len(st) or len(st) > 4:
                raise ValueError(f"strategy {st!r} must combine distinct letters of 'cfts'")
        if mode == "single":
            color_spaces, num_k, strategies = ("hsv",), 1, ("cfts",)
        super().__init__(mode=mode, k=int(k), inc_k=int(inc_k), sigma=float(sigma), min_size=int(min_size),
                         color_spaces=list(color_spaces), num_k=int(num_k), strategies=list(strategies), seed=int(seed))
        if mode in ("fast", "quality"):  # fixed by OpenCV's presets, not used
            self.params.update(min_size=100, color_spaces=[], num_k=3 if mode == "fast" else 5, strategies=[])

    @staticmethod
    def versions() -> dict:
        return {"opencv": _opencv_version()}

    def _strategy(self, letters: str):
        seg = cv2.ximgproc.segmentation
        parts = [getattr(seg, _STRATEGIES[c])() for c in letters]
        return seg.createSelectiveSearchSegmentationStrategyMultiple(*parts) if len(parts) > 1 else parts[0]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        p = self.params
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        if p["mode"] in ("fast", "quality"):
            ss.setBaseImage(bgr)
            switch = ss.switchToSelectiveSearchFast if p["mode"] == "fast" else ss.switchToSelectiveSearchQuality
            switch(p["k"], p["inc_k"], p["sigma"])
        else:
            for cs in p["color_spaces"]:
                ss.addImage(_COLOR_SPACES[cs](bgr))
            for i in range(p["num_k"]):
                gs = cv2.ximgproc.segmentation.createGraphSegmentation(p["sigma"], float(p["k"] + i * p["inc_k"]), p["min_size"])
                ss.addGraphSegmentation(gs)
            for st in p["strategies"]:
                ss.addStrategy(self._strategy(st))
        _seed_libc_rand(p["seed"])
        rects = ss.process()
        return cv_rects_to_xyxy(rects) if len(rects) else np.zeros((0, 4), np.int64)


# ------------------------------------------------------- selectivesearch (ref)
@PROPOSAL_BACKEND_REGISTRY.register()
class ReferenceSelectiveSearch(Backend):
    """The ``selectivesearch`` PyPI package (AlpacaDB port), which the official
    SoCo tool copies; the paper preset calls it with scale 300, sigma 0.9,
    min_size 100 on the full-resolution image.  Output order: initial segments,
    then merged regions in merge order, as in the official JSON."""

    SIZE_PARAMS = {"scale": 2, "min_size": 2, "sigma": 1}

    def __init__(self, scale=300.0, sigma=0.9, min_size=100):
        super().__init__(scale=float(scale), sigma=float(sigma), min_size=int(min_size))

    @staticmethod
    def versions() -> dict:
        return {"selectivesearch": package_version("selectivesearch"), "scikit-image": package_version("scikit-image")}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import selectivesearch

        p = self.params
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skimage's LBP warns on float input
            _, regions = selectivesearch.selective_search(image, scale=p["scale"], sigma=p["sigma"], min_size=p["min_size"])
        if not regions:
            return np.zeros((0, 4), np.int64)
        return official_rects_to_xyxy([r["rect"] for r in regions])


# ------------------------------------------------------------------------ FH
def consecutive_labels(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..n-1 (order of first appearance is not needed, only compactness)."""
    labels = np.asarray(labels)
    top = int(labels.max(initial=0))
    present = np.zeros(top + 1, dtype=bool)
    present[labels.ravel()] = True
    if present.all():
        return labels
    remap = np.cumsum(present) - 1
    return remap[labels]


class _FHBackend(Backend):
    kind = "masks"
    SIZE_PARAMS = {"scale": 2, "min_size": 2, "sigma": 1}

    def __init__(self, scale=1000.0, sigma=0.8, min_size=1000):
        super().__init__(scale=float(scale), sigma=float(sigma), min_size=int(min_size))


@PROPOSAL_BACKEND_REGISTRY.register()
class SkimageFelzenszwalb(_FHBackend):
    """``skimage.segmentation.felzenszwalb`` on the RGB uint8 image (DetCon:
    scale 1000, min_size 1000, sigma left at the default 0.8)."""

    @staticmethod
    def versions() -> dict:
        return {"scikit-image": package_version("scikit-image")}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from skimage.segmentation import felzenszwalb

        p = self.params
        return consecutive_labels(felzenszwalb(image, scale=p["scale"], sigma=p["sigma"], min_size=p["min_size"]))


@PROPOSAL_BACKEND_REGISTRY.register()
class OpenCVFelzenszwalb(_FHBackend):
    """OpenCV ``ximgproc`` graph segmentation (k = ``scale`` on 0-255 values,
    which matches scikit-image's scale on its [0, 1] float image)."""

    @staticmethod
    def versions() -> dict:
        return {"opencv": _opencv_version()}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        p = self.params
        gs = cv2.ximgproc.segmentation.createGraphSegmentation(p["sigma"], p["scale"], p["min_size"])
        return consecutive_labels(gs.processImage(np.ascontiguousarray(image[:, :, ::-1])))


_NAMES = {
    "opencv_ss": "OpenCVSelectiveSearch",
    "selectivesearch": "ReferenceSelectiveSearch",
    "skimage_fh": "SkimageFelzenszwalb",
    "opencv_fh": "OpenCVFelzenszwalb",
}


def build_backend(name: str, **params) -> Backend:
    """Build a backend by its short name (``opencv_ss``, ``selectivesearch``, ``skimage_fh``, ``opencv_fh``)."""
    if name not in _NAMES:
        raise KeyError(f"unknown proposal backend {name!r}; choose from {', '.join(_NAMES)}")
    return PROPOSAL_BACKEND_REGISTRY.get(_NAMES[name])(**params)
