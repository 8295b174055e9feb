"""Named settings for ``tools/precompute_proposals.py --preset``.

``paper`` reproduces the official tools: for selective search the
``selectivesearch`` package with scale 300, sigma 0.9, min_size 100 on the
full-resolution image and the ``ratio3size0308post`` filter (docs/methods/soco.md,
Proposals); for Felzenszwalb, scikit-image with scale 1000, min_size 1000, sigma 0.8
at full resolution (docs/methods/detcon.md, Masks).  The other presets trade exactness
for speed; BENCHMARKS.md ("Proposals") has their measured speed and recall.
"""
from __future__ import annotations

import copy

from .filters import parse_official_strategy
from .generate import ProposalSpec

# The official SoCo filter, plus the training code's whole-image last resort.
PAPER_FILTER = "ratio3size0308post"

PRESETS = {
    "selective_search": {
        "paper": dict(backend="selectivesearch", params=dict(scale=300, sigma=0.9, min_size=100), max_side=0),
        # OpenCV's C++ selective search with the official tool's structure (one
        # colour space, one graph segmentation, one combined colour+fill+texture+size
        # strategy) on the image downscaled to 192 px, k / min_size / sigma scaled
        # with it.  The default: >= 10x the paper preset at >= its recall (BENCHMARKS.md).
        "single": dict(backend="opencv_ss", params=dict(mode="single", k=300, sigma=0.9, min_size=100),
                       max_side=192, scale_params=True),
        # The same at full resolution (about 6x the paper preset, same recall@0.5).
        "single_full": dict(backend="opencv_ss", params=dict(mode="single", k=300, sigma=0.9, min_size=100),
                            max_side=0),
        # OpenCV's "fast" preset of Uijlings et al. (HSV+Lab x 3 k x 2 strategies): ~3x more boxes.
        "fast": dict(backend="opencv_ss", params=dict(mode="fast", k=150, inc_k=150, sigma=0.8), max_side=192),
        # OpenCV's "quality" preset (5 colour spaces x 5 k x 4 strategies): most boxes, slowest.
        "quality": dict(backend="opencv_ss", params=dict(mode="quality", k=150, inc_k=150, sigma=0.8), max_side=192),
    },
    "felzenszwalb": {
        "paper": dict(backend="skimage_fh", params=dict(scale=1000, sigma=0.8, min_size=1000), max_side=0),
        # The paper's scikit-image FH with the same parameters on the image
        # downscaled to 384 px; the label map is stored at that size (DetCon pools
        # masks on a 7x7 grid of 224 px views).  ~2x the paper preset's speed.
        "fast": dict(backend="skimage_fh", params=dict(scale=1000, sigma=0.8, min_size=1000), max_side=384),
        # OpenCV's C++ graph segmentation, same parameters, full resolution.
        "opencv": dict(backend="opencv_fh", params=dict(scale=1000, sigma=0.8, min_size=1000), max_side=0),
    },
}
DEFAULT_PRESET = {"selective_search": "single", "felzenszwalb": "paper"}


def get_preset(method: str, name: str | None = None, **overrides) -> ProposalSpec:
    """The :class:`ProposalSpec` of a named preset, with keyword overrides
    (``params`` entries are merged into the preset's backend parameters)."""
    if method not in PRESETS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(PRESETS)}")
    name = name or DEFAULT_PRESET[method]
    if name not in PRESETS[method]:
        raise ValueError(f"unknown {method} preset {name!r}; choose from {', '.join(PRESETS[method])}")
    cfg = copy.deepcopy(PRESETS[method][name])
    params = cfg.pop("params")
    if overrides.get("backend") and overrides["backend"] != cfg["backend"]:
        params = {}  # another backend: start from its own defaults
    params.update(overrides.pop("params", None) or {})
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if method == "selective_search":
        cfg.setdefault("filter", parse_official_strategy(PAPER_FILTER))
    return ProposalSpec(method=method, params=params, preset=name, **cfg)
