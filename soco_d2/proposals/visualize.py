"""Drawing of cached boxes / label maps on their images, for a person to look at."""
from __future__ import annotations

import cv2
import numpy as np


def _colors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hsv = np.stack([rng.integers(0, 180, n), np.full(n, 200), np.full(n, 255)], axis=1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def draw_boxes(image: np.ndarray, boxes, max_boxes: int = 50, thickness: int = 0, seed: int = 0) -> np.ndarray:
    """RGB image with up to ``max_boxes`` XYXY boxes (x2 exclusive) outlined, each in its own colour."""
    out = np.ascontiguousarray(image.copy())
    boxes = np.asarray(boxes).reshape(-1, 4)[:max_boxes]
    t = thickness or max(1, round(max(image.shape[:2]) / 300))
    for (x1, y1, x2, y2), c in zip(boxes.astype(int), _colors(len(boxes), seed)):
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2) - 1, int(y2) - 1), tuple(int(v) for v in c), t)
    return out


def draw_mask(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5, seed: int = 0) -> np.ndarray:
    """RGB image blended with a colour per segment, segment borders in white.
    The label map is nearest-resized to the image first (caches may store it smaller)."""
    h, w = image.shape[:2]
    lab = np.asarray(labels).astype(np.int32)
    if lab.shape != (h, w):
        lab = cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST)
    colors = _colors(int(lab.max()) + 1, seed)
    out = (image.astype(np.float32) * (1 - alpha) + colors[lab].astype(np.float32) * alpha).astype(np.uint8)
    edge = np.zeros((h, w), bool)
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    out[edge] = 255
    return out
