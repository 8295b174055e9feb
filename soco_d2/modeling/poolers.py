"""RoI pooling with SoCo's scale-aware FPN level assignment.

SoCo assigns a box to an FPN level by its size in the *view's* pixels with fixed
thresholds (sqrt(area) <= 48 -> P2, <= 96 -> P3, <= 192 -> P4, else P5), which
is not detectron2's rule (``assign_boxes_to_levels``: canonical 224 at P4).
``ScaleAwareROIPooler`` is detectron2's ``ROIPooler`` with the rule made a
choice; "detectron2" keeps the stock behaviour.
"""
from __future__ import annotations

import torch
from detectron2.layers import nonzero_tuple
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.structures import Boxes

LEVEL_ASSIGNMENTS = ("soco", "detectron2")


def size_levels(sizes: torch.Tensor, thresholds) -> torch.Tensor:
    """Level index of each size (sqrt of an area in the view's pixels): the first i
    with size <= thresholds[i], else len(thresholds).  Shared by SoCo's boxes and
    DetCon-FPN's masks."""
    edges = torch.as_tensor(list(thresholds), dtype=sizes.dtype, device=sizes.device)
    return torch.bucketize(sizes, edges, right=False)


def soco_levels(boxes: torch.Tensor, thresholds) -> torch.Tensor:
    """Level index (0 = finest input level) of each XYXY box: the first i with
    sqrt(w * h) <= thresholds[i], else len(thresholds)."""
    sizes = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).sqrt()
    return size_levels(sizes, thresholds)


class ScaleAwareROIPooler(ROIPooler):
    """``ROIPooler`` whose level assignment is SoCo's (``"soco"``) or detectron2's.

    ``pool_all_levels`` pools every box on every level instead (the official
    SoCo code's way, used for parity: the result is (L * M, C, R, R), level-major)."""

    def __init__(self, *args, level_assignment: str = "soco", thresholds=(48, 96, 192), **kwargs):
        super().__init__(*args, **kwargs)
        if level_assignment not in LEVEL_ASSIGNMENTS:
            raise ValueError(f"level_assignment must be one of {LEVEL_ASSIGNMENTS}, got {level_assignment!r}")
        if level_assignment == "soco" and len(thresholds) != len(self.level_poolers) - 1:
            raise ValueError(
                f"{len(self.level_poolers)} pooled levels need {len(self.level_poolers) - 1} thresholds, got {list(thresholds)}"
            )
        self.level_assignment = level_assignment
        self.thresholds = tuple(float(t) for t in thresholds)

    def levels(self, box_lists: list[Boxes]) -> torch.Tensor:
        """Level index of every box of every image (concatenated)."""
        boxes = torch.cat([b.tensor for b in box_lists])
        if len(self.level_poolers) == 1:
            return torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
        if self.level_assignment == "soco":
            return soco_levels(boxes, self.thresholds)
        from detectron2.modeling.poolers import assign_boxes_to_levels

        return assign_boxes_to_levels(
            box_lists, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )

    def forward(self, x: list[torch.Tensor], box_lists: list[Boxes]) -> torch.Tensor:
        if self.level_assignment == "detectron2" or len(self.level_poolers) == 1:
            return super().forward(x, box_lists)
        pooler_boxes = convert_boxes_to_pooler_format(box_lists)
        levels = self.levels(box_lists)
        output = x[0].new_zeros((len(pooler_boxes), x[0].shape[1]) + tuple(self.output_size))
        for level, pooler in enumerate(self.level_poolers):
            (index,) = nonzero_tuple(levels == level)
            output.index_put_((index,), pooler(x[level], pooler_boxes[index]))
        return output

    def forward_all_levels(self, x: list[torch.Tensor], box_lists: list[Boxes]) -> torch.Tensor:
        pooler_boxes = convert_boxes_to_pooler_format(box_lists)
        return torch.cat([pooler(feature, pooler_boxes) for feature, pooler in zip(x, self.level_poolers)])
