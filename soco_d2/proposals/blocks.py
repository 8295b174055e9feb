"""Block layouts of the cache: how the records of ``block_size`` consecutive
images (in key order) are stored together.  A block is inflated as a whole
when one of its images is read, and kept for the next reads.

* ``records`` / ``records_deflate``: the images' keys and self-contained
  records (``codec``) side by side, optionally deflated together.  Used for
  label maps (one image per block; records are already compressed).
* ``box_columns``: selective-search boxes split into four streams shared by
  the block (keys; a small table of per-image counts; the distinct
  coordinate values; the per-box indices into them), each deflated on its
  own so each gets its own Huffman code: the indices, most of the bytes, are
  entropy-coded against the whole block's statistics.  Decoding returns the
  exact integers in the stored order; ``record(i)`` rebuilds the canonical
  record, so merging blocks re-creates identical files.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

from . import codec

_U32 = struct.Struct("<I")


def _deflate(data: bytes, strategy: int = zlib.Z_DEFAULT_STRATEGY) -> bytes:
    if not data:
        return b""
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, strategy)
    return c.compress(data) + c.flush()


def _inflate(data) -> bytes:
    return zlib.decompress(data, -15) if len(data) else b""


def _planes(values, width: int) -> bytes:
    return codec._planes(np.asarray(values, dtype=np.int64), width)


def _unplanes(buf, offset: int, count: int, width: int) -> np.ndarray:
    return codec._unplanes(buf, offset, count, width)[0]


class RecordBlocks:
    """Keys and whole records; ``deflate`` compresses the block."""

    def __init__(self, kind: str, deflate: bool):
        self.kind, self.deflate = kind, deflate

    def pack(self, items) -> bytes:
        m = len(items)
        key_ends = np.cumsum([len(k) for k, _ in items], dtype=np.int64)
        rec_ends = np.cumsum([len(r) for _, r in items], dtype=np.int64)
        raw = b"".join([_U32.pack(m), key_ends.astype("<u4").tobytes(), rec_ends.astype("<u4").tobytes()]
                       + [k for k, _ in items] + [bytes(r) for _, r in items])
        return _deflate(raw) if self.deflate else raw

    def unpack(self, data) -> "RecordBlockView":
        return RecordBlockView(self.kind, _inflate(data) if self.deflate else bytes(data))


class RecordBlockView:
    def __init__(self, kind: str, raw: bytes):
        self.kind, self.raw = kind, raw
        (m,) = _U32.unpack_from(raw, 0)
        self.m = m
        key_ends = np.frombuffer(raw, "<u4", m, 4).astype(np.int64)
        rec_ends = np.frombuffer(raw, "<u4", m, 4 + 4 * m).astype(np.int64)
        kbase = 4 + 8 * m
        rbase = kbase + (int(key_ends[-1]) if m else 0)
        self.key_bounds = (np.concatenate([[0], key_ends]) + kbase).tolist()
        self.rec_bounds = (np.concatenate([[0], rec_ends]) + rbase).tolist()

    def key_bytes(self, i: int) -> bytes:
        return self.raw[self.key_bounds[i] : self.key_bounds[i + 1]]

    def keys(self) -> list:
        return [self.key_bytes(i).decode("utf-8") for i in range(self.m)]

    def record(self, i: int) -> bytes:
        return self.raw[self.rec_bounds[i] : self.rec_bounds[i + 1]]

    def value(self, i: int) -> np.ndarray:
        rec = self.record(i)
        return codec.decode_boxes(rec) if self.kind == "boxes" else codec.decode_mask(rec)

    def size(self, i: int) -> tuple:
        return codec.record_size(self.kind, self.record(i))

    def stage(self, i: int) -> int:
        return codec.box_record_info(self.record(i))[2]


# Columns of the per-image table of a box-column block.
_T_KEYLEN, _T_H, _T_W, _T_STAGE, _T_N = range(5)
_T_K = slice(5, 9)  # distinct values per coordinate column
_T_DW = slice(9, 13)  # bytes per delta of the distinct values, per column
_T_GH, _T_GW = 13, 14  # grid the y / x coordinates are stored in (0 = pixels)
_T_COLS = 15


class BoxColumnBlocks:
    """Boxes of a block as separately coded streams (see module doc).

    Stream A (keys, table, distinct values) is one deflate stream with a full
    flush between the parts (fresh Huffman codes for each); stream B (the
    indices) is deflated on its own, Huffman-only or with LZ matches,
    whichever is smaller for this block.
    """

    kind = "boxes"
    _HEAD = struct.Struct("<IBBIIII")  # images, table width, idx strategy, len A, len B, keys bytes, table bytes

    def pack(self, items) -> bytes:
        keys, table, uniq, idx = [], [], [], []
        for kb, rec in items:
            height, width, stage, n, cols = codec.box_columns(rec)
            gh, gw = codec.box_record_grid(rec)
            row = [len(kb), height, width, stage, n, 0, 0, 0, 0, 1, 1, 1, 1, gh, gw]
            if n:  # columns x1, y1, W - x2, H - y2 -> grid units c1, c1, g - c2, g - c2 where on a grid
                for c, (size, g) in enumerate(((width, gw), (height, gh), (width, gw), (height, gh))):
                    if g:
                        u, inv = cols[c]
                        vals = u if c < 2 else size - u
                        gu = codec.to_grid(vals, size, g)
                        gu = gu if c < 2 else g - gu
                        order = np.argsort(gu, kind="stable")  # keep the distinct values ascending
                        rank = np.empty_like(order)
                        rank[order] = np.arange(len(order))
                        cols[c] = (gu[order], rank[inv])
            for c, (uniq_vals, inv) in enumerate(cols):
                deltas = np.diff(uniq_vals, prepend=0)
                dw = codec._width(int(deltas.max()))
                row[5 + c], row[9 + c] = len(uniq_vals), dw
                uniq.append(_planes(deltas, dw))
                if len(uniq_vals) > 1:
                    idx.append(_planes(inv, codec._width(len(uniq_vals) - 1)))
            keys.append(kb)
            table.append(row)
        t = np.asarray(table, dtype=np.int64).reshape(-1, _T_COLS)
        tw = codec._width(int(t.max(initial=0)))
        parts = [b"".join(keys), _planes(t.T.reshape(-1), tw), b"".join(uniq)]
        c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
        a = b"".join(c.compress(p) + c.flush(zlib.Z_FULL_FLUSH) for p in parts[:2]) + c.compress(parts[2]) + c.flush()
        idx = b"".join(idx)
        choices = [_deflate(idx, zlib.Z_HUFFMAN_ONLY), _deflate(idx)]
        strategy = int(len(choices[1]) < len(choices[0]))
        bstream = choices[strategy]
        return self._HEAD.pack(len(items), tw, strategy, len(a), len(bstream), len(parts[0]), len(parts[1])) + a + bstream

    def unpack(self, data) -> "BoxColumnBlockView":
        return BoxColumnBlockView(bytes(data), self._HEAD)


class BoxColumnBlockView:
    kind = "boxes"

    def __init__(self, data: bytes, head: struct.Struct):
        m, tw, _strategy, la, lb, lkeys, ltable = head.unpack_from(data, 0)
        off = head.size
        a = _inflate(data[off : off + la])
        self.idx = _inflate(data[off + la : off + la + lb])
        self.m = m
        self.keys_blob = a[:lkeys]
        self.uniq = a[lkeys + ltable :]
        if m:
            t = np.frombuffer(a, np.uint8, ltable, lkeys)
            t = t.reshape(tw, -1).T.copy().view(f"<u{tw}").reshape(_T_COLS, m).T if tw > 1 else t.reshape(_T_COLS, m).T
            t = t.astype(np.int64)
        else:
            t = np.zeros((0, _T_COLS), np.int64)
        self.t = t
        self.key_bounds = np.concatenate([[0], np.cumsum(t[:, _T_KEYLEN])])
        k, dw, n = t[:, _T_K], t[:, _T_DW], t[:, _T_N]
        self.iw = np.where(k > 256, np.where(k > 65536, 4, 2), 1)
        ulen = (k * dw).reshape(-1)
        ilen = np.where(k > 1, n[:, None] * self.iw, 0).reshape(-1)
        self.uoff = np.concatenate([[0], np.cumsum(ulen)[:-1]]).reshape(-1, 4) if m else ulen.reshape(-1, 4)
        self.ioff = np.concatenate([[0], np.cumsum(ilen)[:-1]]).reshape(-1, 4) if m else ilen.reshape(-1, 4)

    def key_bytes(self, i: int) -> bytes:
        return self.keys_blob[int(self.key_bounds[i]) : int(self.key_bounds[i + 1])]

    def keys(self) -> list:
        b = self.key_bounds.tolist()
        return [self.keys_blob[b[i] : b[i + 1]].decode("utf-8") for i in range(self.m)]

    def size(self, i: int) -> tuple:
        return int(self.t[i, _T_H]), int(self.t[i, _T_W])

    def stage(self, i: int) -> int:
        return int(self.t[i, _T_STAGE])

    def _ints(self, i: int) -> np.ndarray:
        r = self.t[i].tolist()
        n = r[_T_N]
        if n == 0:
            return np.zeros((0, 4), np.int64)
        uoff, ioff, iw = self.uoff[i].tolist(), self.ioff[i].tolist(), self.iw[i].tolist()
        ks = r[5:9]
        if r[9:13] == [1, 1, 1, 1] and iw == [1, 1, 1, 1] and min(ks) > 1:
            # common case, vectorised: one-byte deltas and indices, contiguous per image
            cs = np.cumsum(np.frombuffer(self.uniq, np.uint8, sum(ks), uoff[0]).astype(np.int64))
            starts = np.cumsum([0] + ks[:3])
            bases = np.where(starts > 0, cs[starts - 1], 0)
            idx = np.frombuffer(self.idx, np.uint8, 4 * n, ioff[0]).reshape(4, n)
            return self._finish(cs[idx + starts[:, None]] - bases[:, None], r)
        out = np.empty((4, n), np.int64)
        for c in range(4):
            k, dw = r[5 + c], r[9 + c]
            uniq = np.cumsum(_unplanes(self.uniq, uoff[c], k, dw))
            out[c] = uniq[_unplanes(self.idx, ioff[c], n, iw[c])] if k > 1 else uniq[0]
        return self._finish(out, r)

    @staticmethod
    def _finish(out, r):
        """Columns (x1, y1, W - x2, H - y2), in grid units where marked -> XYXY pixels."""
        H, W, gh, gw = r[_T_H], r[_T_W], r[_T_GH], r[_T_GW]
        if gw:
            out[0] = codec.from_grid(out[0], W, gw)
            out[2] = codec.from_grid(gw - out[2], W, gw)
        else:
            out[2] = W - out[2]
        if gh:
            out[1] = codec.from_grid(out[1], H, gh)
            out[3] = codec.from_grid(gh - out[3], H, gh)
        else:
            out[3] = H - out[3]
        return out.T

    def value(self, i: int) -> np.ndarray:
        return self._ints(i).astype(np.float32)

    def record(self, i: int) -> bytes:
        r = self.t[i].tolist()
        return codec.encode_boxes(self._ints(i), r[_T_H], r[_T_W], r[_T_STAGE], (r[_T_GH], r[_T_GW]))


LAYOUTS = {
    "records": lambda kind: RecordBlocks(kind, deflate=False),
    "records_deflate": lambda kind: RecordBlocks(kind, deflate=True),
    "box_columns": lambda kind: BoxColumnBlocks(),
}


def get_layout(name: str, kind: str):
    if name not in LAYOUTS:
        raise ValueError(f"unknown block layout {name!r}; choose from {', '.join(LAYOUTS)}")
    if name == "box_columns" and kind != "boxes":
        raise ValueError("the box_columns layout stores boxes only")
    return LAYOUTS[name](kind)
