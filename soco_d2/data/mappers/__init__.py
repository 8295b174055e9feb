"""Multi-view pretraining mappers, registered in ``SSL_MAPPER_REGISTRY`` and
chosen by ``cfg.INPUT.SSL.MAPPER``; build one with ``build_ssl_mapper(cfg)``.

Every mapper reads and decodes the image once, draws every random parameter
(crop windows, flips, colour, cutout, masks), cuts, resizes and flips the views
and moves boxes and masks with them.  Its output is ``{"image_id": str,
"views": [...]}`` with, by ``INPUT.SSL.PHOTOMETRIC_ON``:

* "model": uint8 (3, S, S) RGB views and ``"photometric"``: one
  ``soco_d2.data.photometric.ViewPhotometry`` per view, applied by the model;
* "mapper": float32 (3, S, S) RGB views in 0..255 with the colour ops applied
  (not normalised),

plus what its method carries between views:

* ``SoCoMapper``: ``"pairs"``, one per view pair (0, j): ``{"views": (0, j),
  "boxes": (Tensor(K, 4), Tensor(K, 4)), "ids": (Tensor(K,), Tensor(K,))}``,
  XYXY float32 boxes in each side's final view pixels, int64 proposal ids,
  K = ``PROPOSALS.NUM_PER_VIEW``;
* ``DetConMapper``: ``"masks"``, per view an int32 (S, S) segment-id map, ids
  0..n-1 consistent across the views of the image, and ``"mask_layout"``, what
  the model pools;
* ``ImageLevelMapper``: nothing more.

Boxes and masks are always in the final pixel frame of *their* view (after
crop, resize and flip): they are moved by the same detectron2 transforms as
the image.  Each mapper's ``collate`` stacks a list of outputs into a batch
(``soco_d2.data.collate``).  Mappers draw from the global ``random`` /
``np.random`` / torch RNGs, which the pretraining loader seeds per sample.
"""
from .base import LazyCache, MultiViewMapper, ViewGeometry, ViewSpec, parse_views, per_view, photometric_placement
from .build import SSL_MAPPER_REGISTRY, build_ssl_mapper
from .detcon import DetConMapper, compact_ids, grid_label_map, instances_label_map
from .image_level import ImageLevelMapper
from .soco import SoCoMapper, boxes_to_view

__all__ = [
    "SSL_MAPPER_REGISTRY",
    "build_ssl_mapper",
    "MultiViewMapper",
    "ViewSpec",
    "ViewGeometry",
    "LazyCache",
    "parse_views",
    "per_view",
    "photometric_placement",
    "SoCoMapper",
    "ImageLevelMapper",
    "DetConMapper",
    "boxes_to_view",
    "grid_label_map",
    "instances_label_map",
    "compact_ids",
]
