"""Region proposals and segment masks for pretraining: selective search (SoCo)
and Felzenszwalb-Huttenlocher label maps (DetCon), their backends, SoCo's
filter policy, and the memory-mapped on-disk cache the data loaders read.

``ProposalCache(path)[image_id]`` is all a mapper needs: float32 (N, 4) XYXY
boxes in original-image pixels (x2 exclusive), or a label map.
"""
from .backends import PROPOSAL_BACKEND_REGISTRY, build_backend
from .boxes import box_iou, map_boxes_to_original, official_rects_to_xyxy, xyxy_to_official_rects
from .cache import CacheWriter, ProposalCache, merge_caches
from .filters import FilterPolicy, parse_official_strategy
from .generate import ProposalGenerator, ProposalSpec
from .official import export_official_json, import_official_json
from .presets import DEFAULT_PRESET, PRESETS, get_preset

__all__ = [
    "CacheWriter",
    "DEFAULT_PRESET",
    "FilterPolicy",
    "PRESETS",
    "PROPOSAL_BACKEND_REGISTRY",
    "ProposalCache",
    "ProposalGenerator",
    "ProposalSpec",
    "box_iou",
    "build_backend",
    "export_official_json",
    "get_preset",
    "import_official_json",
    "map_boxes_to_original",
    "merge_caches",
    "official_rects_to_xyxy",
    "parse_official_strategy",
    "xyxy_to_official_rects",
]
