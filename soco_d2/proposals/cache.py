"""The on-disk proposal / mask cache: one file per dataset (or shard), read by
memory mapping.  The byte layout is documented in ``proposals/README.md``.

* :class:`ProposalCache` opens a file without loading it: a key is hashed to a
  bucket of a small on-disk hash table, which gives the image's index; the
  image's record sits in one compressed block (``block_size`` images), which
  is inflated on demand (the last few blocks are kept).  Reads are O(1).
* :class:`CacheWriter` collects records in any order (spilled to a temporary
  file, so masks of millions of images never sit in memory), then writes the
  file sorted by key, deterministically (no timestamps, fixed compression
  settings) and atomically (temporary file, fsync, rename).
* :func:`merge_caches` joins shards (or the part files of a resumable run)
  into one file, byte-identical to writing all records at once.

Files check themselves (format 2): the header (zlib, with its Adler-32) says
what the file holds and for which image ids; a CRC32 covers the index
sections (checked at open) and one covers each block (checked when the block
is read), so a corrupt byte gives :class:`CacheCorruptError` naming the file,
the block and the remedy instead of wrong boxes.  Format-1 files (no
checksums) are still read, with a warning.
"""
from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import struct
import tempfile
import zlib
from collections import OrderedDict

import numpy as np

from ..errors import InputError
from . import codec
from .blocks import get_layout

MAGIC = b"SOCOPC\x00\x01"
FORMAT = "soco_d2.proposal_cache"
FORMAT_VERSION = 2  # 2: CRC32 of the index and of every block, image-id digest; 1: no checksums
READABLE_VERSIONS = (1, 2)
KINDS = ("boxes", "masks")
# What each kind holds and which config key reads it (for messages).
KIND_USE = {"boxes": "selective-search boxes, for SoCo's PROPOSALS.BOX_CACHE",
            "masks": "Felzenszwalb label maps, for DetCon's PROPOSALS.MASK_CACHE"}
# Block settings per kind: boxes are tiny and compress well together; label
# maps are already compressed one by one.
DEFAULT_BLOCK = {"boxes": (64, "box_columns"), "masks": (1, "records")}
_HEAD = struct.Struct("<8sQ")
_ALIGN = 8
_BLOCK_CACHE = 8
# Index sections, in file order (format 2 adds the per-block CRC32s).
_INDEX_SECTIONS = ("block_offsets", "bucket_starts", "bucket_entries", "fingerprints", "block_crc32")

logger = logging.getLogger("soco_d2.proposals")
_warned_unchecked: set = set()


class CacheError(InputError, ValueError):
    """A cache file that cannot be used as asked (wrong kind, other dataset, corrupt);
    an ``InputError``, so a tool ends with its one-line message."""


class CacheCorruptError(CacheError):
    """A cache file whose bytes fail a check: the file is damaged (or not a cache)."""


def _key_bytes(key) -> bytes:
    return str(key).encode("utf-8")


def image_ids_digest(image_ids) -> str:
    """SHA-256 of the sorted (UTF-8 byte order), newline-joined image ids: one
    value for a set of images, recorded in a cache header and compared with a dataset."""
    keys = sorted({str(k) for k in image_ids}, key=_key_bytes)
    return hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()


def make_parent_dir(path: str) -> str:
    """Create the folder of an output file; a clear error when a file stands in its way."""
    d = os.path.dirname(os.path.abspath(path))
    up = d
    while not os.path.exists(up):
        up = os.path.dirname(up)
    if not os.path.isdir(up):
        raise CacheError(f"cannot write {path}: {up} is a file, not a folder")
    os.makedirs(d, exist_ok=True)
    return d


def source_dataset(header: dict) -> str:
    """The dataset a cache was made from, as its header names it ("" if unknown)."""
    source = header.get("source")
    return str((source.get("dataset") if isinstance(source, dict) else source) or "")


def recompute_hint(path: str, header: dict | None = None) -> str:
    """The command that rebuilds ``path`` (as well as the header allows)."""
    header = header or {}
    dataset = source_dataset(header)
    source = (f"--image-dir {dataset}" if dataset.startswith("/") else f"--dataset {dataset}") if dataset else \
        "--dataset NAME"
    method = header.get("method") or "selective_search|felzenszwalb"
    preset = (header.get("generator") or {}).get("preset")
    preset = f" --preset {preset}" if preset else ""
    return f"python tools/precompute_proposals.py {source} --method {method}{preset} --output {path} --overwrite"


def key_hashes(key_bytes: bytes) -> tuple:
    """(bucket hash, 16-bit fingerprint) of a key: independent bits of one
    BLAKE2b digest, stable across processes, machines and Python versions."""
    h = int.from_bytes(hashlib.blake2b(key_bytes, digest_size=8).digest(), "little")
    return h & 0xFFFFFFFFFFFF, h >> 48


class ProposalCache:
    """Read-only, memory-mapped proposal (``kind == "boxes"``) or mask cache.

    ``cache[image_id]`` -> float32 (N, 4) XYXY boxes in original-image pixels
    (x2/y2 exclusive), or the label map (uint16 / int32, possibly at reduced
    resolution; ``image_size`` gives the original (H, W)).  Picklable: a copy
    re-opens the file (for dataloader workers).
    """

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self._open()

    def _open(self):
        self._file = open(self.path, "rb")
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size < _HEAD.size:
                raise CacheCorruptError(f"{self.path} is not a proposal cache (too short: {size} bytes)")
            self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except Exception:
            self._file.close()
            raise
        try:
            self._read_layout(size)
        except Exception:
            self.close()
            raise
        self._blocks: OrderedDict = OrderedDict()
        self._keys = None

    def _corrupt(self, what: str) -> CacheCorruptError:
        return CacheCorruptError(f"{self.path}: {what}. The file is damaged; recompute it: "
                                 f"{recompute_hint(self.path, getattr(self, 'header', None))}")

    def _read_layout(self, size: int) -> None:
        magic, hlen = _HEAD.unpack_from(self._mm, 0)
        if magic != MAGIC:
            raise CacheCorruptError(f"{self.path} is not a soco_d2 proposal cache (bad magic {magic!r})")
        if _HEAD.size + hlen > size:
            raise self._corrupt(f"the header length ({hlen} bytes) runs past the end of the file ({size} bytes)")
        try:
            z = zlib.decompressobj()
            text = z.decompress(self._mm[_HEAD.size : _HEAD.size + hlen])
            if not z.eof or z.unused_data:
                raise zlib.error("the compressed header does not end where its length says")
            self.header = json.loads(text.decode("utf-8"))
            if not isinstance(self.header, dict):
                raise ValueError("not a JSON object")
        except (zlib.error, UnicodeDecodeError, ValueError) as e:
            raise self._corrupt(f"corrupt header ({e})") from None
        version = self.header.get("format_version")
        if self.header.get("format") != FORMAT or version not in READABLE_VERSIONS:
            raise CacheError(f"{self.path}: unsupported cache format {self.header.get('format')!r} v{version} "
                             f"(this soco_d2 reads v{', v'.join(map(str, READABLE_VERSIONS))})")
        self.format_version = version
        base = _align(_HEAD.size + hlen)
        sec = self.header["sections"]
        need = base + max(off + n for off, n in sec.values())
        if size < need:
            raise CacheCorruptError(f"{self.path} is truncated ({size} bytes, header says {need}); "
                                    f"recompute it: {recompute_hint(self.path, self.header)}")

        def view(name, dtype):
            off, nbytes = sec[name]
            return np.frombuffer(self._mm, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize, offset=base + off)

        if version >= 2:
            if size != need:
                raise self._corrupt(f"{size - need} bytes after the end of the data")
            if any(self._mm[_HEAD.size + hlen : base]):
                raise self._corrupt("non-zero padding after the header")
            index_end = base + sec["blob"][0]
            crc = zlib.crc32(self._mm[base:index_end])
            if crc != self.header["index_crc32"]:
                raise self._corrupt(f"the index (bytes {base}..{index_end}) fails its CRC32 check "
                                    f"(stored {self.header['index_crc32']:#010x}, computed {crc:#010x})")
            self._block_crc = view("block_crc32", "<u4")
        else:
            self._block_crc = None
            if self.path not in _warned_unchecked:
                _warned_unchecked.add(self.path)
                logger.warning("%s is a format-%d cache without checksums: corrupt bytes in it cannot be detected. "
                               "Recompute it to get a checked file: %s", self.path, version,
                               recompute_hint(self.path, self.header))
        self._block_offsets = view("block_offsets", "<u8")
        iw = f"<u{self.header['index_width']}"
        self._bucket_starts = view("bucket_starts", iw)
        self._entries = view("bucket_entries", iw)
        self._fps = view("fingerprints", "<u2")
        self._blob_base = base + sec["blob"][0]
        self._mask = len(self._bucket_starts) - 2  # nbuckets - 1 (power of two)
        self._layout = get_layout(self.header["block_layout"], self.header["kind"])

    # ------------------------------------------------------------ metadata
    @property
    def kind(self) -> str:
        return self.header["kind"]

    @property
    def method(self) -> str:
        return self.header["method"]

    @property
    def generator(self) -> dict:
        return self.header["generator"]

    @property
    def versions(self) -> dict:
        return self.header["versions"]

    @property
    def image_ids_sha256(self) -> str | None:
        """:func:`image_ids_digest` of every image the file covers (stored and skipped); None for format 1."""
        return self.header.get("image_ids_sha256")

    @property
    def skipped(self) -> dict:
        """Images that could not be processed: image_id -> reason."""
        return self.header["skipped"]

    def __len__(self) -> int:
        return self.header["num_images"]

    def __repr__(self) -> str:
        return f"ProposalCache({self.path!r}, kind={self.kind!r}, images={len(self)})"

    # -------------------------------------------------------------- access
    @property
    def num_blocks(self) -> int:
        return len(self._block_offsets) - 1

    def _raw_block(self, b: int):
        lo, hi = int(self._block_offsets[b]), int(self._block_offsets[b + 1])
        data = self._mm[self._blob_base + lo : self._blob_base + hi]
        if self._block_crc is not None:
            crc = zlib.crc32(data)
            if crc != int(self._block_crc[b]):
                G = self.header["block_size"]
                raise self._corrupt(f"block {b} of {self.num_blocks} (images {b * G}..{min((b + 1) * G, len(self)) - 1} "
                                    f"in key order, bytes {self._blob_base + lo}..{self._blob_base + hi}) fails its "
                                    f"CRC32 check (stored {int(self._block_crc[b]):#010x}, computed {crc:#010x})")
        return self._layout.unpack(data)

    def _block(self, b: int):
        blk = self._blocks.get(b)
        if blk is None:
            blk = self._blocks[b] = self._raw_block(b)
            if len(self._blocks) > _BLOCK_CACHE:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(b)
        return blk

    def _find(self, key: str):
        kb = _key_bytes(key)
        h, fp = key_hashes(kb)
        bucket = h & self._mask
        G = self.header["block_size"]
        for j in range(int(self._bucket_starts[bucket]), int(self._bucket_starts[bucket + 1])):
            if int(self._fps[j]) == fp:
                idx = int(self._entries[j])
                blk = self._block(idx // G)
                if blk.key_bytes(idx % G) == kb:
                    return blk, idx % G
        return None

    def _lookup(self, key):
        key = key if isinstance(key, str) else str(key)
        found = self._find(key)
        if found is None:
            raise KeyError(f"image_id {key!r} is not in the {self.kind} cache {self.path}")
        return found

    def record(self, key) -> bytes:
        """The canonical encoded record of an image (see ``codec``)."""
        blk, i = self._lookup(key)
        return blk.record(i)

    def __getitem__(self, key) -> np.ndarray:
        blk, i = self._lookup(key)
        return blk.value(i)

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key) -> bool:
        return self._find(key if isinstance(key, str) else str(key)) is not None

    def may_contain(self, keys) -> np.ndarray:
        """Per key, False when it is certainly not stored (no entry of its hash bucket has
        its 16-bit fingerprint), else True (``in`` confirms by reading its block).  Reads
        only the index: a quick check of a whole dataset against the cache."""
        queries = [key_hashes(_key_bytes(k)) for k in keys]
        if not queries:
            return np.zeros(0, bool)
        nbuckets = len(self._bucket_starts) - 1
        entry_bucket = np.repeat(np.arange(nbuckets, dtype=np.int64), np.diff(self._bucket_starts.astype(np.int64)))
        stored = (entry_bucket << 16) | self._fps.astype(np.int64)
        asked = np.array([((h & self._mask) << 16) | fp for h, fp in queries], dtype=np.int64)
        return np.isin(asked, stored)

    def image_size(self, key) -> tuple:
        """Original (H, W) of the image (label maps may be stored smaller)."""
        blk, i = self._lookup(key)
        return tuple(int(v) for v in blk.size(i))

    def stage(self, key) -> str:
        """Which filter stage produced an image's boxes ("main", a fallback, or "empty")."""
        if self.kind != "boxes":
            raise TypeError("stage() is for box caches")
        blk, i = self._lookup(key)
        code = blk.stage(i)
        stages = self.generator.get("filter_stages") or ["main"]
        return stages[code] if code < len(stages) else "empty"

    def keys(self) -> list:
        """All image ids, sorted (decodes every block once; cached)."""
        if self._keys is None:
            keys = []
            for b in range(self.num_blocks):
                keys += self._raw_block(b).keys()
            self._keys = keys
        return list(self._keys)

    def __iter__(self):
        return iter(self.keys())

    def iter_records(self):
        """(image_id, canonical record bytes) in file order (merging, export)."""
        for b in range(self.num_blocks):
            blk = self._raw_block(b)
            for i, key in enumerate(blk.keys()):
                yield key, blk.record(i)

    def items(self):
        for key, rec in self.iter_records():
            yield key, (codec.decode_boxes(rec) if self.kind == "boxes" else codec.decode_mask(rec))

    # ----------------------------------------------------------- lifecycle
    def close(self):
        self._blocks = OrderedDict()
        mm, f = getattr(self, "_mm", None), getattr(self, "_file", None)
        self._mm = None
        if mm is not None:
            # numpy views may still reference the map; let the GC close it then
            try:
                mm.close()
            except BufferError:
                pass
        if f is not None:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        self._open()


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def record_stats(kind: str, records, min_side: int = 0) -> dict:
    """Deterministic integer statistics of records (stored in the header);
    ``tiny_images`` counts images with a side below ``min_side``."""
    tiny = 0
    if kind == "boxes":
        total, by_stage, empty, most = 0, {}, 0, 0
        for rec in records:
            h, w, stage, n = codec.box_record_info(rec)
            tiny += min(h, w) < min_side
            total += n
            most = max(most, n)
            empty += n == 0
            by_stage[str(stage)] = by_stage.get(str(stage), 0) + 1
        return {"boxes": total, "max_boxes_per_image": most, "images_without_boxes": empty,
                "images_by_stage_code": dict(sorted(by_stage.items())), "tiny_images": tiny}
    total, most, bytes_per_id = 0, 0, {}
    for rec in records:
        info = codec.mask_record_info(rec)
        tiny += min(info[0], info[1]) < min_side
        total += info[4]
        most = max(most, info[4])
        bytes_per_id[str(info[5])] = bytes_per_id.get(str(info[5]), 0) + 1
    return {"segments": total, "max_segments_per_image": most, "images_by_bytes_per_id": dict(sorted(bytes_per_id.items())),
            "tiny_images": tiny}


class CacheWriter:
    """Collects records, then writes one cache file atomically on :meth:`commit`.

    ``header`` holds the caller's fields (``method``, ``generator``,
    ``versions``, ``source``, optional ``shard``...); the writer adds the
    format fields, counts, statistics and the section table.  Records may be
    added in any order; the file is sorted by key, so the result depends only
    on the set of (key, record) pairs and the header.
    """

    def __init__(self, path: str, kind: str, header: dict, block_size: int | None = None, block_layout: str | None = None):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.path = os.fspath(path)
        self.kind = kind
        self.header = dict(header)
        default_g, default_layout = DEFAULT_BLOCK[kind]
        self.block_size = int(block_size or default_g)
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        self.block_layout = block_layout or default_layout
        self._layout = get_layout(self.block_layout, kind)
        d = make_parent_dir(self.path)
        fd, self._spill_path = tempfile.mkstemp(prefix=os.path.basename(self.path) + ".", suffix=".spill.tmp", dir=d)
        self._spill = os.fdopen(fd, "w+b")
        self._index: dict = {}  # key -> (offset, length)
        self._skipped: dict = {}
        self._closed = False

    def __len__(self):
        return len(self._index)

    def add_record(self, key, record: bytes) -> None:
        key = key if isinstance(key, str) else str(key)
        if key in self._index or key in self._skipped:
            raise ValueError(f"image_id {key!r} added twice to {self.path}")
        if "\n" in key:
            raise ValueError(f"image_id {key!r} contains a newline")
        self._index[key] = (self._spill.tell(), len(record))
        self._spill.write(record)

    def add_boxes(self, key, height: int, width: int, boxes, stage: int = 0, grid=None) -> None:
        """``grid``: (h, w) of the downscaled image the boxes were mapped back from (smaller storage)."""
        self.add_record(key, codec.encode_boxes(boxes, height, width, stage, grid))

    def add_mask(self, key, height: int, width: int, labels) -> None:
        self.add_record(key, codec.encode_mask(labels, height, width))

    def add_skipped(self, key, reason: str) -> None:
        key = key if isinstance(key, str) else str(key)
        if key in self._index or key in self._skipped:
            raise ValueError(f"image_id {key!r} added twice to {self.path}")
        self._skipped[key] = str(reason)

    def _read(self, key) -> bytes:
        off, n = self._index[key]
        return os.pread(self._spill.fileno(), n, off)

    def commit(self) -> str:
        """Write the file (temporary name, fsync, rename) and return its path."""
        if self._closed:
            raise RuntimeError("writer already closed")
        self._spill.flush()
        keys = sorted(self._index, key=_key_bytes)
        n, G = len(keys), self.block_size
        # blocks
        blob, block_offsets = [], [0]
        for b0 in range(0, n, G):
            items = [(_key_bytes(k), self._read(k)) for k in keys[b0 : b0 + G]]
            data = self._layout.pack(items)
            blob.append(data)
            block_offsets.append(block_offsets[-1] + len(data))
        # hash table: buckets of image indices, each with a 16-bit fingerprint
        nbuckets = 1
        while nbuckets * 2 < max(n, 1):
            nbuckets *= 2
        hashes = [key_hashes(_key_bytes(k)) for k in keys]
        buckets = np.array([h & (nbuckets - 1) for h, _ in hashes], dtype=np.int64)
        order = np.argsort(buckets, kind="stable")
        index_width = 2 if n < 1 << 16 else 4
        starts = np.searchsorted(buckets[order], np.arange(nbuckets + 1)).astype(f"<u{index_width}")
        entries = order.astype(f"<u{index_width}")
        fps = np.array([hashes[i][1] for i in order], dtype="<u2")
        block_crc = np.array([zlib.crc32(b) for b in blob], dtype="<u4")
        sections = OrderedDict()
        parts, offset, index_crc = [], 0, 0
        for name, data in (
            ("block_offsets", np.asarray(block_offsets, dtype="<u8").tobytes()),
            ("bucket_starts", starts.tobytes()),
            ("bucket_entries", entries.tobytes()),
            ("fingerprints", fps.tobytes()),
            ("block_crc32", block_crc.tobytes()),
            ("blob", b"".join(blob)),
        ):
            sections[name] = [offset, len(data)]
            pad = _align(len(data)) - len(data) if name != "blob" else 0
            parts += [data, b"\0" * pad]
            offset += len(data) + pad
            if name in _INDEX_SECTIONS:
                index_crc = zlib.crc32(b"\0" * pad, zlib.crc32(data, index_crc))
        # statistics from the stored records (so a merge recomputes the same)
        min_side = int((self.header.get("generator") or {}).get("min_image_side", 0))
        stats = record_stats(self.kind, (self._read(k) for k in keys), min_side)
        header = dict(self.header)
        header.update(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            kind=self.kind,
            num_images=n,
            image_ids_sha256=image_ids_digest(list(keys) + list(self._skipped)),
            index_crc32=index_crc,
            skipped=dict(sorted(self._skipped.items(), key=lambda kv: _key_bytes(kv[0]))),
            stats=stats,
            block_size=G,
            block_layout=self.block_layout,
            index_width=index_width,
            sections=dict(sections),
        )
        hbytes = zlib.compress(json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8"), 9)
        pre = _HEAD.pack(MAGIC, len(hbytes)) + hbytes
        pre += b"\0" * (_align(len(pre)) - len(pre))
        d = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(self.path) + ".", suffix=".tmp", dir=d)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pre)
                for p in parts:
                    f.write(p)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self.abort()
        return self.path

    def abort(self) -> None:
        """Drop everything added so far (removes the spill file)."""
        if not self._closed:
            self._closed = True
            self._spill.close()
            if os.path.exists(self._spill_path):
                os.unlink(self._spill_path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None and not self._closed:
            self.commit()
        else:
            self.abort()


# Header fields that must agree between files that are merged.
COMPATIBLE_FIELDS = ("kind", "method", "generator", "versions", "source", "block_size", "block_layout")


def merge_caches(inputs, output: str, header_update: dict | None = None, drop: tuple = ("shard",),
                 require_all_shards: bool = True) -> str:
    """Join caches with disjoint keys into ``output``.

    Used for shards (``require_all_shards`` checks that shard ids 0..S-1 are
    all there exactly once) and for the part files of a resumable run.  The
    result equals a single writer fed every record: sorted keys, recomputed
    statistics, the common header minus ``drop`` fields, plus ``header_update``.
    """
    caches = [ProposalCache(p) for p in inputs]
    if not caches:
        raise ValueError("nothing to merge: no input caches")
    try:
        first = caches[0].header
        for c in caches[1:]:
            diff = [f for f in COMPATIBLE_FIELDS if c.header.get(f) != first.get(f)]
            if diff:
                details = "; ".join(f"{f}: {first.get(f)!r} vs {c.header.get(f)!r}" for f in diff)
                raise ValueError(f"cannot merge {caches[0].path} and {c.path}: they differ in {details}")
        if require_all_shards:
            shards = [c.header.get("shard") for c in caches]
            if any(s is not None for s in shards):
                if any(s is None for s in shards):
                    raise ValueError("cannot merge shard files with non-shard files")
                counts = {s["num_shards"] for s in shards}
                if len(counts) != 1:
                    raise ValueError(f"shards come from runs with different --num-shards: {sorted(counts)}")
                total = counts.pop()
                ids = sorted(s["shard_id"] for s in shards)
                missing = sorted(set(range(total)) - set(ids))
                dup = sorted({i for i in ids if ids.count(i) > 1})
                if missing or dup:
                    raise ValueError(f"shards of a {total}-shard run: missing {missing}, duplicated {dup}")
        header = {k: v for k, v in first.items() if k not in _WRITER_FIELDS}
        for k in drop:
            header.pop(k, None)
        header.update(header_update or {})
        with CacheWriter(output, first["kind"], header, first["block_size"], first["block_layout"]) as w:
            for c in caches:
                for key, rec in c.iter_records():
                    w.add_record(key, rec)
                for key, reason in c.skipped.items():
                    w.add_skipped(key, reason)
    finally:
        for c in caches:
            c.close()
    return output


_WRITER_FIELDS = {"format", "format_version", "kind", "num_images", "skipped", "stats", "block_size", "block_layout",
                  "index_width", "sections", "image_ids_sha256", "index_crc32"}
