"""Downscaling before segmentation: images (area interpolation) and label maps
(nearest neighbour, exact ids)."""
from __future__ import annotations

import cv2
import numpy as np


def resize_max_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so the longer side is ``max_side`` (aspect kept; never upscales; 0 = off)."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image
    s = max_side / max(h, w)
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def resize_labels(labels: np.ndarray, max_side: int) -> np.ndarray:
    """Nearest-neighbour downscale of a label map (longer side ``max_side``; 0 = off)."""
    h, w = labels.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return labels
    s = max_side / max(h, w)
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    # pixel centres of the small map, sampled in the big one (exact, no dtype limits)
    ys = np.minimum(((np.arange(nh) + 0.5) * h / nh).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(nw) + 0.5) * w / nw).astype(np.int64), w - 1)
    return labels[ys[:, None], xs[None, :]]
