"""SoCo's multi-view mapper (SoCo_C4, SoCo_FPN, SoCo*); docs/methods/soco.md (Views)."""
from __future__ import annotations

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T

from ..augment import sample_cutout_squares
from ..boxes import LevelRule, build_pair_boxes, sanitize_proposals, select_pairs_with_retries
from ..collate import collate_soco
from .base import LazyCache, MultiViewMapper, ViewGeometry
from .build import SSL_MAPPER_REGISTRY

__all__ = ["SoCoMapper", "boxes_to_view"]


def boxes_to_view(boxes: np.ndarray, geom: ViewGeometry) -> np.ndarray:
    """Original-image boxes (already clipped to the view's window) -> the view's
    final pixel frame (crop, resize(s), flip), clipped to [0, S]; float32 (K, 4).

    The view's own detectron2 transforms move the boxes; crops, resizes and flips
    keep boxes axis-aligned, so their coordinate maps are applied to the corners
    directly (the arithmetic of their ``apply_coords``, a fraction of ``apply_box``'s
    cost); any other transform goes through ``apply_box``."""
    out = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    for t in geom.transforms.transforms:
        if isinstance(t, T.CropTransform):
            out -= (t.x0, t.y0, t.x0, t.y0)
        elif isinstance(t, T.ResizeTransform):
            out *= (t.new_w * 1.0 / t.w, t.new_h * 1.0 / t.h, t.new_w * 1.0 / t.w, t.new_h * 1.0 / t.h)
        elif isinstance(t, T.HFlipTransform):
            out = np.stack([t.width - out[:, 2], out[:, 1], t.width - out[:, 0], out[:, 3]], axis=1)
        else:
            out = t.apply_box(out)
    return np.clip(out, 0.0, float(geom.spec.size)).astype(np.float32)


@SSL_MAPPER_REGISTRY.register()
class SoCoMapper(MultiViewMapper):
    """Views and proposal boxes of SoCo, following the released scripts.

    Views by ``INPUT.SSL.VIEW_SIZES / VIEW_TYPES``: SoCo_FPN ``[224, 224, 112]``
    ``["whole", "crop", "crop"]``; SoCo_C4 ``[224, 224]`` ``["whole", "crop"]``;
    SoCo* ``[224, 224, 192, 112]`` ``["whole", "crop", "crop", "downsample:1"]``.
    Pairs are (0, j) for every j >= 1.

    Per sample: proposals of the image (``PROPOSALS.BOX_CACHE``, original
    pixels; none -> one whole-image box) get ids 1..M; crop windows are drawn
    and K candidates per pair selected, re-drawing the windows up to
    ``PROPOSALS.MAX_TRIES`` times (``soco_d2.data.boxes``); view 0's copies are
    jittered per pair (FPN variants), each side is clipped to its window and
    padded to K by duplicates; a pair with no candidate becomes the two whole
    views with id 1.  A "downsample:J" view reuses pair (0, J)'s boxes, ids and
    view-0 set (same jitter).  Then the views are flipped (p 0.5 each; view 0's
    box sets flip with view 0), coloured (per-view BYOL recipe) and cut out
    inside their boxes (``INPUT.SSL.CUTOUT_VIEWS``; the squares are drawn here and
    filled with the colour ops).  ``collate`` assigns every box its pooled level
    (``level_rule``, from ``MODEL.SOCO``).

    Output: ``{"image_id", "views"[, "photometric"], "pairs": [{"views": (0, j),
    "boxes": (Tensor(K, 4), Tensor(K, 4)), "ids": (Tensor(K,) int64, Tensor(K,)
    int64)}]}``, boxes XYXY float32 in each side's final view pixels.

    Deviations from the official code, on purpose: continuous box coordinates
    instead of inclusive integer corners (``soco_d2.data.boxes``); boxes are
    kept in view pixels instead of [0, 1] of the crop (the model needs pixels
    for RoIAlign and the level rule anyway); cutout uses the integer pixels of
    the *flipped* boxes (the official one used un-flipped boxes, then crashed on
    float corners); jitter is a config value for every variant (the C4 dataset
    had none and rejected the argument: set ``PROPOSALS.JITTER_PROB 0``).
    """

    @configurable
    def __init__(
        self,
        *,
        box_source,
        num_per_view: int = 4,
        max_tries: int = 5,
        jitter_prob: float = 0.5,
        jitter_ratio: float = 0.1,
        missing: str = "error",
        cutout_views=(),
        cutout_prob: float = 0.5,
        cutout_ratio=(0.1, 0.3),
        level_rule: LevelRule | None = None,
        **kwargs,
    ):
        """
        Args:
            box_source: path of a ``ProposalCache`` (opened lazily, once per
                process) or a mapping ``{image_id: float32 (N, 4) XYXY boxes}``.
            level_rule: the pooled level of a box (the model's ``MODEL.SOCO``
                settings); default: one level.
            kwargs: the view/augmentation arguments of :class:`MultiViewMapper`.
        """
        super().__init__(**kwargs)
        if len(self.views) < 2:
            raise ValueError("SoCo needs at least two views (pairs (0, j))")
        if self.views[0].kind == "downsample":
            raise ValueError("SoCo's view 0 must be 'whole' or 'crop'")
        for j, spec in enumerate(self.views[1:], start=1):
            if spec.kind == "downsample" and spec.source == 0:
                raise ValueError(f"view {j}: 'downsample:0' would pair view 0 with itself; use a source view >= 1")
        self.boxes = LazyCache(box_source, "proposal box", missing, "PROPOSALS.BOX_CACHE", kind="boxes")
        self.k = int(num_per_view)
        if self.k < 1:
            raise ValueError("PROPOSALS.NUM_PER_VIEW must be >= 1")
        self.max_tries = int(max_tries)
        self.jitter_prob, self.jitter_ratio = float(jitter_prob), float(jitter_ratio)
        self.cutout_views = [int(v) for v in cutout_views]
        if any(not 0 <= v < len(self.views) for v in self.cutout_views):
            raise ValueError(f"INPUT.SSL.CUTOUT_VIEWS {self.cutout_views} names a view that does not exist")
        self.cutout_prob, self.cutout_ratio = float(cutout_prob), tuple(float(r) for r in cutout_ratio)
        self.level_rule = level_rule or LevelRule()
        # pairs that draw their own proposals; a downsampled view borrows its source's pair
        self.primary_pairs = [(0, j) for j, s in enumerate(self.views) if j > 0 and s.kind != "downsample"]

    @classmethod
    def from_config(cls, cfg):
        kwargs = cls.base_kwargs(cfg)
        p, s, soco = cfg.PROPOSALS, cfg.INPUT.SSL, cfg.MODEL.SOCO
        kwargs.update(
            box_source=p.BOX_CACHE,
            num_per_view=p.NUM_PER_VIEW,
            max_tries=p.MAX_TRIES,
            jitter_prob=p.JITTER_PROB,
            jitter_ratio=p.JITTER_RATIO,
            missing=p.MISSING,
            cutout_views=list(s.CUTOUT_VIEWS),
            cutout_prob=s.CUTOUT_PROB,
            cutout_ratio=tuple(s.CUTOUT_RATIO),
            level_rule=LevelRule.for_features(soco.IN_FEATURES, soco.LEVEL_ASSIGNMENT, soco.LEVEL_THRESHOLDS),
        )
        return kwargs

    def pair_source(self, j: int) -> int:
        spec = self.views[j]
        return spec.source if spec.kind == "downsample" else j

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict, image = self.open_image(dataset_dict)
        height, width = image.height, image.width
        image_id = str(dataset_dict["image_id"])

        proposals = self.boxes.lookup(image_id, (height, width))
        proposals = sanitize_proposals(np.zeros((0, 4)) if proposals is None else proposals, height, width)
        ids = np.arange(1, len(proposals) + 1, dtype=np.int64)

        rects, selections, _ = select_pairs_with_retries(
            proposals, lambda: self.sample_rects(height, width), self.primary_pairs, self.k, self.max_tries
        )
        pair_boxes = {
            sel.views[1]: build_pair_boxes(
                proposals, ids, sel, rects[0], rects[sel.views[1]], self.k, self.jitter_prob, self.jitter_ratio
            )
            for sel in selections
        }

        geoms = self.geometry(rects, self.sample_flips(), height, width)
        views = self.make_views(image, geoms)
        photometry = self.sample_photometry()

        pairs, per_view_boxes = [], {v: [] for v in range(len(self.views))}
        for j in range(1, len(self.views)):
            pb = pair_boxes[self.pair_source(j)]
            b0, bj = boxes_to_view(pb.boxes[0], geoms[0]), boxes_to_view(pb.boxes[1], geoms[j])
            per_view_boxes[0].append(b0)
            per_view_boxes[j].append(bj)
            pairs.append(
                {
                    "views": (0, j),
                    "boxes": (torch.from_numpy(b0), torch.from_numpy(bj)),
                    "ids": (torch.from_numpy(pb.ids[0].copy()), torch.from_numpy(pb.ids[1].copy())),
                }
            )
        for v in self.cutout_views:
            size = self.views[v].size
            photometry[v].cutout = sample_cutout_squares(
                np.concatenate(per_view_boxes[v]), size, size, self.cutout_prob, self.cutout_ratio
            )
        return {"image_id": image_id, **self.finish_views(views, photometry), "pairs": pairs}

    def collate(self, samples: list[dict]) -> dict:
        return collate_soco(samples, self.level_rule)
