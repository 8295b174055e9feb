"""Box conventions shared by the backends, the cache and the official JSON.

Inside soco_d2 a box is XYXY in continuous pixel coordinates with x2/y2
exclusive: the region covering pixel columns 3..10 is ``x1=3, x2=11``.  The
backends report other conventions, converted here once:

* the ``selectivesearch`` package (and so the official SoCo JSON) gives
  ``(x, y, w, h)`` with ``w = max_col - min_col`` (one less than the extent);
* OpenCV's ``ximgproc`` gives ``cv::Rect`` ``(x, y, w, h)`` with ``w`` the extent.
"""
from __future__ import annotations

import numpy as np


def official_rects_to_xyxy(rects) -> np.ndarray:
    """SoCo/selectivesearch ``[x, y, w, h]`` (w = max - min) -> int64 XYXY (x2 exclusive)."""
    r = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
    return np.stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2] + 1, r[:, 1] + r[:, 3] + 1], axis=1)


def xyxy_to_official_rects(boxes) -> np.ndarray:
    """Inverse of :func:`official_rects_to_xyxy` (exact for integer boxes)."""
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0] - 1, b[:, 3] - b[:, 1] - 1], axis=1)


def cv_rects_to_xyxy(rects) -> np.ndarray:
    """OpenCV ``cv::Rect`` ``(x, y, w, h)`` (w = extent) -> int64 XYXY (x2 exclusive)."""
    r = np.asarray(rects, dtype=np.int64).reshape(-1, 4)
    return np.stack([r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]], axis=1)


def map_boxes_to_original(boxes, resized_hw, original_hw) -> np.ndarray:
    """Integer XYXY boxes of a resized image -> integer XYXY boxes of the original.

    Continuous coordinates scale exactly (a box edge at column c of the resized
    image sits at c * W / W' in the original); they are rounded to the nearest
    pixel edge, clipped to the image and kept at least one pixel wide.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    (h, w), (H, W) = resized_hw, original_hw
    if (h, w) == (H, W):
        return np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    sx, sy = W / w, H / h
    out = np.rint(b * np.array([sx, sy, sx, sy])).astype(np.int64)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, W)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, H)
    out[:, 0] = np.minimum(out[:, 0], W - 1)
    out[:, 1] = np.minimum(out[:, 1], H - 1)
    out[:, 2] = np.maximum(out[:, 2], out[:, 0] + 1)
    out[:, 3] = np.maximum(out[:, 3], out[:, 1] + 1)
    return out


def whole_image_box(height: int, width: int) -> np.ndarray:
    return np.array([[0, 0, width, height]], dtype=np.int64)


def box_iou(a, b) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of XYXY boxes (continuous, x2 exclusive)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def best_overlaps(gt_boxes, proposals) -> np.ndarray:
    """For each ground-truth box, the best IoU of any proposal (0 when there is none)."""
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    if len(gt) == 0:
        return np.zeros(0)
    props = np.asarray(proposals, dtype=np.float64).reshape(-1, 4)
    if len(props) == 0:
        return np.zeros(len(gt))
    return box_iou(gt, props).max(axis=1)
