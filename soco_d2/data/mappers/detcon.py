"""DetCon's two-view mapper with segment-id maps carried through every view (docs/methods/detcon.md: Masks, Views)."""
from __future__ import annotations

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.structures.masks import polygons_to_bitmask

from ..collate import collate_detcon
from ..masks import MaskGrids
from .base import LazyCache, MultiViewMapper
from .build import SSL_MAPPER_REGISTRY

__all__ = ["DetConMapper", "grid_label_map", "instances_label_map", "compact_ids"]

MASK_SOURCES = ("fh", "grid", "gt")


def grid_label_map(height: int, width: int, grid_size: int) -> np.ndarray:
    """DetCon's spatial heuristic: pixel (y, x) -> cell ``row * G + col`` of a
    G x G grid over the original image (a pixel belongs to the cell holding its centre)."""
    g = int(grid_size)
    if g < 1:
        raise ValueError(f"MODEL.DETCON.GRID_SIZE must be >= 1, got {g}")
    rows = np.minimum(((np.arange(height) + 0.5) * g / height).astype(np.int64), g - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * g / width).astype(np.int64), g - 1)
    return (rows[:, None] * g + cols[None, :]).astype(np.int32)


def _annotation_mask(segm, height: int, width: int) -> np.ndarray:
    if isinstance(segm, list):  # COCO polygons
        return polygons_to_bitmask(segm, height, width) if segm else np.zeros((height, width), bool)
    if isinstance(segm, dict):  # RLE, compressed or not
        from pycocotools import mask as mask_util

        if isinstance(segm.get("counts"), list):
            segm = mask_util.frPyObjects(segm, height, width)
        return mask_util.decode(segm).astype(bool)
    mask = np.asarray(segm).astype(bool)
    if mask.shape != (height, width):
        raise ValueError(f"binary mask of shape {mask.shape} for a {height}x{width} image")
    return mask


def instances_label_map(annotations, height: int, width: int) -> np.ndarray:
    """Ground-truth instance masks -> one id map: background 0, instances 1..n.

    Crowd regions are left to the background (as detectron2's training mapper
    drops them).  Instances are painted from the largest to the smallest, so
    where masks overlap the smaller object stays visible.
    """
    masks = [
        _annotation_mask(a["segmentation"], height, width)
        for a in annotations or []
        if not a.get("iscrowd", 0) and a.get("segmentation") is not None
    ]
    label = np.zeros((height, width), dtype=np.int32)
    for i in sorted(range(len(masks)), key=lambda i: -int(masks[i].sum())):
        label[masks[i]] = i + 1
    return label


def compact_ids(maps: list[np.ndarray]) -> list[np.ndarray]:
    """Renumber the ids present in any of the maps to 0..n-1 (same old id -> same new id
    in every map, order kept); int32."""
    low = min(int(m.min()) for m in maps)
    high = max(int(m.max()) for m in maps)
    if low < 0 or high >= 1 << 24:  # sparse or negative ids: sort them
        flat = np.concatenate([m.ravel() for m in maps])
        _, inverse = np.unique(flat, return_inverse=True)
        sizes = np.cumsum([0] + [m.size for m in maps])
        return [inverse[a:b].reshape(m.shape).astype(np.int32) for a, b, m in zip(sizes[:-1], sizes[1:], maps)]
    present = sum(np.bincount(m.ravel(), minlength=high + 1) for m in maps) > 0
    new_id = (np.cumsum(present) - 1).astype(np.int32)  # a lookup table: linear time, no sort
    return [new_id[m] for m in maps]


@SSL_MAPPER_REGISTRY.register()
class DetConMapper(MultiViewMapper):
    """Views plus, per view, the segment-id map cropped, flipped and
    nearest-resized with it.

    Masks by ``MODEL.DETCON.MASK_SOURCE``: "fh" (Felzenszwalb label maps of
    ``PROPOSALS.MASK_CACHE``; a map stored at reduced resolution is first
    nearest-resized to the image, pixel-centre aligned), "grid"
    (``GRID_SIZE`` x ``GRID_SIZE`` cells of the original image) or "gt" (the
    dict's instance annotations, polygons or RLE; background is one segment).
    The paper's views: ``INPUT.SSL.VIEW_SIZES [224, 224]``, ``VIEW_TYPES
    ["crop", "crop"]``, ``CROP_SCALE (0.08, 1)``, ``CROP_ATTEMPTS 1`` with
    ``CROP_FALLBACK "clip"``, ``INTERPOLATION "bicubic"``, BYOL colours.

    Output: ``{"image_id", "views"[, "photometric"], "masks": [int32 (S, S) per
    view], "mask_layout": [soco_d2.data.masks.ViewMasks per view]}``; ids are
    compacted to 0..n-1 over the ids present in any view, so the same id is the
    same segment in every view of the image.  ``mask_layout`` is what the model
    pools (``MaskGrids``: majority-vote owners on each pooled level's grid,
    ``MODEL.DETCON.NUM_MASKS`` ids sampled per view among those owning a cell,
    with replacement, each slot's level); the collate keeps only it.  A missing
    cache entry with ``PROPOSALS.MISSING whole_image`` gives one segment.

    Deviation from the official code: colour ops follow torchvision/PIL
    semantics (multiplicative brightness, PIL blur radius) rather than the
    TF/dm-pix ones; ids are not wrapped to uint8 (the official maps wrap
    modulo 256 on images with many segments).
    """

    @configurable
    def __init__(self, *, mask_source: str = "fh", mask_cache=None, grid_size: int = 5, missing: str = "error",
                 grids: MaskGrids | None = None, **kwargs):
        """
        Args:
            mask_source: "fh", "grid" or "gt".
            mask_cache: for "fh": path of a mask ``ProposalCache`` (opened lazily,
                once per process) or a mapping ``{image_id: (H', W') int label map}``.
            grids: the pooled feature grids and mask sampling (the model's
                ``MODEL.DETCON`` settings); default: C5 (stride 32), 16 masks.
        """
        super().__init__(**kwargs)
        self.grids = grids or MaskGrids(["res5"])
        if mask_source not in MASK_SOURCES:
            raise ValueError(f"MODEL.DETCON.MASK_SOURCE must be one of {MASK_SOURCES}, got {mask_source!r}")
        self.mask_source = mask_source
        self.masks = LazyCache(mask_cache, "mask", missing, "PROPOSALS.MASK_CACHE", kind="masks") if mask_source == "fh" else None
        self.grid_size = int(grid_size)

    @classmethod
    def from_config(cls, cfg):
        kwargs = cls.base_kwargs(cfg)
        detcon = cfg.MODEL.DETCON
        kwargs.update(
            mask_source=detcon.MASK_SOURCE,
            mask_cache=cfg.PROPOSALS.MASK_CACHE,
            grid_size=detcon.GRID_SIZE,
            missing=cfg.PROPOSALS.MISSING,
            grids=MaskGrids(detcon.IN_FEATURES, detcon.LEVEL_THRESHOLDS, detcon.NUM_MASKS),
        )
        return kwargs

    def label_map(self, dataset_dict: dict, height: int, width: int) -> np.ndarray:
        """The image's segment-id map (int32, or the cache's unsigned dtype), at the image's
        resolution or, for a cache map stored smaller, at its own (it covers the whole
        image; views sample it)."""
        if self.mask_source == "grid":
            return grid_label_map(height, width, self.grid_size)
        if self.mask_source == "gt":
            if "annotations" not in dataset_dict:
                raise KeyError(
                    f"MASK_SOURCE 'gt' needs 'annotations' in the dataset dicts (image {dataset_dict['image_id']!r}); "
                    "use a labeled dataset such as coco_2017_train"
                )
            return instances_label_map(dataset_dict["annotations"], height, width)
        label = self.masks.lookup(str(dataset_dict["image_id"]), (height, width))
        if label is None:
            return np.zeros((height, width), dtype=np.int32)
        label = np.asarray(label)
        if label.ndim == 3 and label.shape[0] == 1:
            label = label[0]
        if label.ndim != 2:
            raise ValueError(f"mask of {dataset_dict['image_id']!r} has shape {label.shape}, expected (H, W)")
        if label.dtype.kind == "u" and label.dtype.itemsize <= 4:
            return label  # the cache's uint16 maps: no copy
        return label.astype(np.int32, copy=False)

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict, image = self.open_image(dataset_dict)
        height, width = image.height, image.width
        label = self.label_map(dataset_dict, height, width)
        geoms = self.geometry(self.sample_rects(height, width), self.sample_flips(), height, width)
        views = self.make_views(image, geoms)
        photometry = self.sample_photometry()
        masks = compact_ids(self.render_label_maps(label, geoms, height, width))
        num_ids = int(max(m.max() for m in masks)) + 1
        return {
            "image_id": str(dataset_dict["image_id"]),
            **self.finish_views(views, photometry),
            "masks": [torch.from_numpy(m) for m in masks],
            "mask_layout": [self.grids.layout(m, num_ids) for m in masks],
        }

    def collate(self, samples: list[dict]) -> dict:
        return collate_detcon(samples)
