"""Collates: a list of mapper outputs -> one batch of stacked tensors.

Each mapper has one (``mapper.collate``), which the pretraining loader runs in
its workers.  Everything that needs an index or a count is worked out here, on
the CPU, so the model's forward never reads a value back from the training
device: which samples each photometric op touches, which FPN level each SoCo box
is pooled from and the per-level order of the boxes, DetCon's statistics.

A batch is a dict:

* ``image_ids``: list of str;
* ``views``: per view, (N, 3, S, S) uint8 (``INPUT.SSL.PHOTOMETRIC_ON "model"``) or
  float32 RGB in 0..255 with the colour ops already applied ("mapper"); with
  ``INPUT.SSL.DECODE_ON "device"`` instead ``encoded``, one
  ``soco_d2.data.decode.EncodedViews`` per image (the model makes ``views``);
* ``photometric``: per view a ``PhotometricBatch`` (uint8 views), else None;
* SoCo (``collate_soco``): ``pairs``, per view pair (a, b): ``views``, ``boxes`` /
  ``ids`` (per side (N, K, 4) float32 / (N, K) int64) and ``rows`` (per side, the
  rows of its boxes in that view's ``roi_plans`` entry); ``roi_plans``: per view
  a ``RoIPlan`` or None; ``level_rule``;
* DetCon (``collate_detcon``): ``masks``, per view ``owners`` (per level (N, h, w)
  int16), ``ids`` and ``levels`` ((N, K) int64); ``stats``: Python floats to log.

``batch_to_device`` moves one to the model (``non_blocking``: the loader pins
its memory when training on CUDA).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .boxes import LevelRule
from .decode import EncodedViews
from .photometric import PhotometricBatch

__all__ = ["collate_views", "collate_soco", "collate_detcon", "RoIPlan", "batch_to_device"]


def collate_views(samples: list[dict]) -> dict:
    """The part every method shares: image ids, stacked views, photometric parameters."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    batch = {"image_ids": [str(s.get("image_id", "")) for s in samples]}
    if "encoded" in samples[0]:  # DECODE_ON device: the model decodes and renders the views
        num_views = len(samples[0]["encoded"].sizes)
        batch["encoded"] = [s["encoded"] for s in samples]
    else:
        num_views = len(samples[0]["views"])
        batch["views"] = [torch.stack([s["views"][v] for s in samples]) for v in range(num_views)]
    batch["photometric"] = None
    if samples[0].get("photometric") is not None:
        batch["photometric"] = [PhotometricBatch.from_views([s["photometric"][v] for s in samples])
                                for v in range(num_views)]
    return batch


@dataclass
class RoIPlan:
    """Every box pooled from one view (all its pairs), ordered for per-level RoIAlign.

    ``rois`` (T, 5) float32 (image index, x1, y1, x2, y2), sorted by level;
    ``counts``: boxes per level in that order (Python ints); ``inverse`` (T,) int64:
    ``pooled_sorted[inverse]`` is in the original order (box sets one after the
    other, see a pair's ``rows``); ``levels`` (T,) int64 in the original order."""

    rois: torch.Tensor
    inverse: torch.Tensor
    levels: torch.Tensor
    counts: list[int]

    @classmethod
    def from_box_sets(cls, box_sets: list[torch.Tensor], level_rule: LevelRule) -> "RoIPlan":
        """Box sets (N, K, 4), one after the other; row n of a set belongs to image n."""
        boxes = torch.cat([b.reshape(-1, 4) for b in box_sets])
        image = torch.cat([torch.arange(b.shape[0]).repeat_interleave(b.shape[1]) for b in box_sets])
        return cls.from_boxes(boxes, image, level_rule)

    @classmethod
    def from_boxes(cls, boxes: torch.Tensor, image: torch.Tensor, level_rule: LevelRule) -> "RoIPlan":
        """(T, 4) XYXY boxes (on the CPU) and the (T,) image index of each."""
        boxes = boxes.float()
        levels = level_rule(boxes)
        order = torch.argsort(levels, stable=True)
        counts = torch.bincount(levels, minlength=level_rule.num_levels).tolist()
        if len(counts) > level_rule.num_levels:
            raise ValueError(f"box levels up to {len(counts) - 1} for {level_rule.num_levels} pooled levels")
        rois = torch.cat([image[:, None].float(), boxes], dim=1)[order]
        return cls(rois.contiguous(), torch.argsort(order), levels, counts)

    def _map(self, fn) -> "RoIPlan":
        return RoIPlan(fn(self.rois), fn(self.inverse), fn(self.levels), self.counts)

    def to(self, device, non_blocking: bool = False) -> "RoIPlan":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "RoIPlan":
        return self._map(lambda t: t.pin_memory())


def collate_soco(samples: list[dict], level_rule: LevelRule) -> dict:
    """``collate_views`` plus SoCo's pairs and one ``RoIPlan`` per view (levels by ``level_rule``)."""
    batch = collate_views(samples)
    num_views = len(batch["photometric"] or batch["views"])
    pairs, box_sets = [], [[] for _ in range(num_views)]
    for p, pair in enumerate(samples[0]["pairs"]):
        views = tuple(int(v) for v in pair["views"])
        boxes = tuple(torch.stack([s["pairs"][p]["boxes"][side] for s in samples]) for side in (0, 1))
        ids = tuple(torch.stack([s["pairs"][p]["ids"][side] for s in samples]) for side in (0, 1))
        if boxes[0].shape[:2] != boxes[1].shape[:2]:
            raise ValueError("the two sides of a pair must carry the same number of boxes (the mapper pads them)")
        rows = []
        for view, side_boxes in zip(views, boxes):
            start = sum(b.shape[0] * b.shape[1] for b in box_sets[view])
            box_sets[view].append(side_boxes)
            rows.append((start, start + side_boxes.shape[0] * side_boxes.shape[1]))
        pairs.append({"views": views, "boxes": boxes, "ids": ids, "rows": tuple(rows)})
    batch["pairs"] = pairs
    batch["roi_plans"] = [RoIPlan.from_box_sets(sets, level_rule) if sets else None for sets in box_sets]
    batch["level_rule"] = level_rule
    return batch


def collate_detcon(samples: list[dict]) -> dict:
    """``collate_views`` plus each view's mask owners, sampled ids and their levels
    (``soco_d2.data.masks.ViewMasks``), and the statistics DetCon logs."""
    batch = collate_views(samples)
    masks, present = [], []
    for v in range(len(samples[0]["mask_layout"])):
        layouts = [s["mask_layout"][v] for s in samples]
        masks.append({
            "owners": [torch.stack([m.owners[level] for m in layouts]) for level in range(len(layouts[0].owners))],
            "ids": torch.stack([m.ids for m in layouts]),
            "levels": torch.stack([m.levels for m in layouts]),
        })
        present.extend(m.num_present for m in layouts)
    batch["masks"] = masks
    matched = (masks[0]["ids"][:, :, None] == masks[-1]["ids"][:, None, :]).any(dim=2).float().mean()
    batch["stats"] = {
        "detcon/masks_present": float(sum(present)) / len(present),  # ids that can be sampled, per view
        "detcon/matched_fraction": float(matched),  # slots of view 1 whose id was also drawn in view 2
    }
    return batch


def batch_to_device(batch, device, non_blocking: bool = True):
    """Every tensor of a batch (dicts, lists, tuples, objects with ``to``) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, (PhotometricBatch, RoIPlan, EncodedViews)):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: batch_to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(batch_to_device(v, device, non_blocking) for v in batch)
    return batch
