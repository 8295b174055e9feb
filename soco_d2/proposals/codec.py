"""Compact, exact encodings of one image's boxes or label map (a *record*).

Boxes (integer XYXY, x2 exclusive, inside the image) are stored column-wise
as ``x1, y1, W - x2, H - y2`` (so the many boxes touching a border become 0);
each column is its sorted distinct values (delta coded) plus one small index
per box into them.  Selective-search boxes share corners heavily (every
merged region's edges are edges of its two children), so a column has far
fewer distinct values than boxes and the indices fit in a byte.  The records
of a block of images are then deflated together (see ``cache.py``).  Decoding
gives back exactly the stored integers, in the stored order.

Label maps are stored with the fewest bytes per id that hold every id
(uint8 / uint16 / int32 byte planes), zlib-compressed; they decode to uint16
(<= 65536 segments) or int32, never wrapping ids like DetCon's uint8 maps.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

_BOX_HEAD = struct.Struct("<IIBIII")  # height, width, stage, number of boxes, grid height, grid width
_MASK_HEAD = struct.Struct("<IIIIIB")  # height, width, stored h, stored w, segments, bytes per id
_U32 = struct.Struct("<I")


def _width(max_value: int) -> int:
    return 1 if max_value < 1 << 8 else 2 if max_value < 1 << 16 else 4


def _planes(values: np.ndarray, width: int) -> bytes:
    """Little-endian values as byte planes (all low bytes, then the next ...): zeros group together."""
    if width == 1:
        return values.astype(np.uint8).tobytes()
    a = values.astype(f"<u{width}").view(np.uint8).reshape(-1, width)
    return a.T.tobytes()


def _unplanes(buf, offset: int, count: int, width: int):
    n = count * width
    raw = np.frombuffer(buf, dtype=np.uint8, count=n, offset=offset)
    if width == 1:
        return raw.astype(np.int64), offset + n
    vals = raw.reshape(width, count).T.copy().view(f"<u{width}").reshape(count)
    return vals.astype(np.int64), offset + n


def check_boxes(boxes, height: int, width: int) -> np.ndarray:
    """Integer XYXY boxes inside a ``height x width`` image, or ValueError."""
    b = np.asarray(boxes)
    b = b.reshape(-1, 4) if b.size else np.zeros((0, 4), np.int64)
    if b.dtype.kind == "f":
        if not np.all(np.isfinite(b)) or not np.array_equal(b, np.round(b)):
            raise ValueError("boxes must have integer pixel coordinates (x2/y2 exclusive)")
    b = b.astype(np.int64)
    if len(b):
        ok = (b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= width) & (b[:, 3] <= height)
        ok &= (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        if not ok.all():
            bad = b[~ok][0].tolist()
            raise ValueError(f"box {bad} is empty or outside the {height}x{width} image (XYXY, x2/y2 exclusive)")
    return b


def to_grid(values, size: int, grid: int):
    """Grid units ``c`` with ``rint(c * (size / grid)) == values`` (the mapping of
    ``boxes.map_boxes_to_original``), or None when a value is off that grid."""
    if not grid or grid >= size:
        return None
    step = size / grid
    c = np.rint(np.asarray(values, dtype=np.float64) / step)
    return c.astype(np.int64) if np.array_equal(np.rint(c * step), values) else None


def from_grid(c, size: int, grid: int) -> np.ndarray:
    return np.rint(np.asarray(c, dtype=np.float64) * (size / grid)).astype(np.int64)


def encode_boxes(boxes, height: int, width: int, stage: int = 0, grid=None) -> bytes:
    """Record of an image's boxes.  ``grid`` = (h, w) of the downscaled image the
    boxes were computed on: an axis whose coordinates all lie on that grid is
    marked so the cache can store them in (smaller) grid units; it is dropped
    (0) for an axis where they do not, so a record is canonical."""
    b = check_boxes(boxes, height, width)
    gh, gw = grid or (0, 0)
    if len(b) == 0 or to_grid(b[:, [1, 3]], height, gh) is None:
        gh = 0
    if len(b) == 0 or to_grid(b[:, [0, 2]], width, gw) is None:
        gw = 0
    out = [_BOX_HEAD.pack(height, width, stage, len(b), gh, gw)]
    if len(b):
        cols = (b[:, 0], b[:, 1], width - b[:, 2], height - b[:, 3])
        for col in cols:
            uniq, inv = np.unique(col, return_inverse=True)
            deltas = np.diff(uniq, prepend=0)
            dw = _width(int(deltas.max()))
            out += [_U32.pack(len(uniq)), bytes([dw]), _planes(deltas, dw)]
            if len(uniq) > 1:
                iw = _width(len(uniq) - 1)
                out += [bytes([iw]), _planes(inv.reshape(-1), iw)]
    return b"".join(out)


def box_record_info(record) -> tuple:
    """(height, width, stage, number of boxes) without decoding the boxes."""
    return _BOX_HEAD.unpack_from(record, 0)[:4]


def box_record_grid(record) -> tuple:
    """(grid height, grid width) of a record (0 = coordinates not on a grid)."""
    return _BOX_HEAD.unpack_from(record, 0)[4:]


def box_columns(record) -> tuple:
    """(height, width, stage, n, [(distinct values, index per box)] x 4 columns)
    of a record; the columns are ``x1, y1, W - x2, H - y2``."""
    height, width, stage, n = _BOX_HEAD.unpack_from(record, 0)[:4]
    cols = []
    if n:
        off = _BOX_HEAD.size
        for _ in range(4):
            (k,) = _U32.unpack_from(record, off)
            dw = record[off + 4]
            deltas, off = _unplanes(record, off + 5, k, dw)
            if k > 1:
                iw = record[off]
                inv, off = _unplanes(record, off + 1, n, iw)
            else:
                inv = np.zeros(n, np.int64)
            cols.append((np.cumsum(deltas), inv))
    return height, width, stage, n, cols


def decode_boxes(record) -> np.ndarray:
    """float32 (N, 4) XYXY boxes of a record (exact integers)."""
    height, width, _stage, n, cols = box_columns(record)
    if n == 0:
        return np.zeros((0, 4), np.float32)
    x1, y1, rx, ry = (u[i] for u, i in cols)
    return np.stack([x1, y1, width - rx, height - ry], axis=1).astype(np.float32)


# ---------------------------------------------------------------- label maps
def label_dtype(num_segments: int):
    """The dtype label maps decode to: uint16 while ids fit, else int32."""
    return np.uint16 if num_segments <= 1 << 16 else np.int32


def encode_mask(labels, height: int, width: int, level: int = 6) -> bytes:
    """Record of a label map (ids >= 0) of an image whose original size is ``height x width``."""
    lab = np.asarray(labels)
    if lab.ndim != 2 or lab.size == 0:
        raise ValueError(f"a label map must be a non-empty 2-D array, got shape {lab.shape}")
    if lab.dtype.kind not in "iu":
        raise ValueError(f"label maps must be integer arrays, got {lab.dtype}")
    lo, hi = int(lab.min()), int(lab.max())
    if lo < 0 or hi >= 1 << 31:
        raise ValueError(f"segment ids must be in [0, 2**31), got [{lo}, {hi}]")
    bpi = _width(hi)
    payload = zlib.compress(_planes(lab.reshape(-1), bpi), level)
    h, w = lab.shape
    return _MASK_HEAD.pack(height, width, h, w, hi + 1, bpi) + payload


def mask_record_info(record) -> tuple:
    """(height, width, stored h, stored w, number of ids, bytes per id)."""
    return _MASK_HEAD.unpack_from(record, 0)


def decode_mask(record) -> np.ndarray:
    _H, _W, h, w, nseg, bpi = _MASK_HEAD.unpack_from(record, 0)
    raw = zlib.decompress(memoryview(record)[_MASK_HEAD.size :])
    vals, _ = _unplanes(raw, 0, h * w, bpi)
    return vals.astype(label_dtype(nseg)).reshape(h, w)


def record_size(kind: str, record) -> tuple:
    """Original (H, W) of a record of either kind."""
    head = _BOX_HEAD if kind == "boxes" else _MASK_HEAD
    height, width = head.unpack_from(record, 0)[:2]
    return int(height), int(width)
