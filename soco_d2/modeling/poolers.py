"""RoI pooling with SoCo's scale-aware FPN level assignment.

SoCo assigns a box to an FPN level by its size in the *view's* pixels with fixed
thresholds (sqrt(area) <= 48 -> P2, <= 96 -> P3, <= 192 -> P4, else P5), which
is not detectron2's rule (``assign_boxes_to_levels``: canonical 224 at P4).
``ScaleAwareROIPooler`` is detectron2's ``ROIPooler`` with the rule made a
choice (``soco_d2.data.boxes.LevelRule``; "detectron2" keeps the stock
behaviour).

The levels and the per-level order of the boxes are worked out on the CPU by
the collate (``soco_d2.data.collate.RoIPlan``), so pooling never reads a value
back from the device.  RoIAlign runs in float32 with autocast off: one call
per level for all the boxes of a view (every pair), each level cast once,
instead of torchvision's autocast wrapper casting the whole level on every call.
"""
from __future__ import annotations

import torch
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from soco_d2.data.boxes import LevelRule, soco_levels
from soco_d2.data.collate import RoIPlan

__all__ = ["LEVEL_ASSIGNMENTS", "ScaleAwareROIPooler", "soco_levels"]

LEVEL_ASSIGNMENTS = ("soco", "detectron2")


class ScaleAwareROIPooler(ROIPooler):
    """``ROIPooler`` whose level assignment is SoCo's (``"soco"``) or detectron2's.

    ``pool(x, plan)`` pools the boxes of a ``RoIPlan`` (original order);
    ``pool_all_levels(x, plan)`` pools every box on every level instead (the
    official SoCo code's way, used for parity: (L, T, C, R, R)).
    ``forward(x, box_lists)`` is the stock ``ROIPooler`` call (plans the boxes
    on the CPU first)."""

    def __init__(self, *args, level_assignment: str = "soco", thresholds=(48, 96, 192), **kwargs):
        super().__init__(*args, **kwargs)
        if level_assignment not in LEVEL_ASSIGNMENTS:
            raise ValueError(f"level_assignment must be one of {LEVEL_ASSIGNMENTS}, got {level_assignment!r}")
        num_levels = len(self.level_poolers)
        if level_assignment == "soco" and num_levels > 1 and len(thresholds) != num_levels - 1:
            raise ValueError(f"{num_levels} pooled levels need {num_levels - 1} thresholds, got {list(thresholds)}")
        self.level_assignment = level_assignment
        self.thresholds = tuple(float(t) for t in thresholds) if num_levels > 1 else ()
        if num_levels == 1:
            self.level_rule = LevelRule()
        else:
            self.level_rule = LevelRule(
                level_assignment, self.thresholds if level_assignment == "soco" else (), self.min_level,
                self.max_level, self.canonical_box_size, self.canonical_level,
            )

    def levels(self, box_lists: list[Boxes]) -> torch.Tensor:
        """Level index of every box of every image (concatenated)."""
        return self.level_rule(torch.cat([b.tensor for b in box_lists]))

    def plan(self, box_lists: list[Boxes]) -> RoIPlan:
        """The ``RoIPlan`` of one box list per image, built on the CPU."""
        boxes = torch.cat([b.tensor.detach().cpu() for b in box_lists])
        image = torch.cat([torch.full((len(b),), i, dtype=torch.int64) for i, b in enumerate(box_lists)])
        return RoIPlan.from_boxes(boxes, image, self.level_rule)

    def _check(self, x: list[torch.Tensor], plan: RoIPlan) -> None:
        if len(x) != len(self.level_poolers) or len(plan.counts) != len(self.level_poolers):
            raise ValueError(f"{len(self.level_poolers)} pooled levels, got {len(x)} feature maps and a plan "
                             f"for {len(plan.counts)} levels")

    def pool(self, x: list[torch.Tensor], plan: RoIPlan) -> torch.Tensor:
        """(T, C, R, R) float32 RoIAlign of the plan's boxes, each on its level, original order."""
        self._check(x, plan)
        with torch.autocast(x[0].device.type, enabled=False):
            pooled, start = [], 0
            for feature, pooler, count in zip(x, self.level_poolers, plan.counts):
                # an empty level is still pooled: its features stay in the graph (DDP)
                pooled.append(pooler(feature.float(), plan.rois[start : start + count]))
                start += count
            return torch.cat(pooled)[plan.inverse]

    def pool_all_levels(self, x: list[torch.Tensor], plan: RoIPlan) -> torch.Tensor:
        """(L, T, C, R, R) float32: every box of the plan on every level, original order."""
        self._check(x, plan)
        with torch.autocast(x[0].device.type, enabled=False):
            rois = plan.rois[plan.inverse]
            return torch.stack([pooler(feature.float(), rois) for feature, pooler in zip(x, self.level_poolers)])

    def forward(self, x: list[torch.Tensor], box_lists: list[Boxes]) -> torch.Tensor:
        plan = self.plan(box_lists).to(x[0].device)
        return self.pool(x, plan)
