"""Checking a cache file: against its use (:func:`check_cache`, at start-up,
before a model is built) and as a whole (:func:`verify_cache`,
``tools/precompute_proposals.py --verify PATH``).

Each failure is one :class:`~soco_d2.proposals.cache.CacheError` whose message
names the file, what is wrong and the command that fixes it.
"""
from __future__ import annotations

import logging
import os
import re

from . import codec
from .cache import (KIND_USE, KINDS, CacheCorruptError, CacheError, ProposalCache, image_ids_digest, record_stats,
                    source_dataset)

logger = logging.getLogger("soco_d2.proposals")

METHOD_OF_KIND = {"boxes": "selective_search", "masks": "felzenszwalb"}
_SUFFIX = {"boxes": "ss", "masks": "fh"}


def make_command(kind: str, dataset_name: str, output: str | None = None) -> str:
    """The precompute command that makes a ``kind`` cache of a dataset."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name.split(",")[0].strip()).strip("_") or "dataset"
    output = output or f"proposals/{slug}_{_SUFFIX[kind]}.pcache"
    return (f"python tools/precompute_proposals.py --dataset {dataset_name.split(',')[0].strip()} "
            f"--method {METHOD_OF_KIND[kind]} --output {output}")


def _name(key: str, path: str) -> str:
    return f"{key} {path!r}" if key else repr(path)


def check_cache_kind(cache: ProposalCache, kind: str | None, key: str = "", dataset_name: str = "DATASET") -> None:
    """Raise :class:`CacheError` unless an opened cache holds ``kind`` ("boxes" / "masks"; None = any)."""
    if kind is None or cache.kind == kind:
        return
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    swapped = " (are PROPOSALS.BOX_CACHE and PROPOSALS.MASK_CACHE swapped?)" if key.startswith("PROPOSALS.") else ""
    raise CacheError(
        f"{_name(key, cache.path)} holds {KIND_USE[cache.kind]}, but {KIND_USE[kind]} are needed{swapped}. "
        f"Point it at a {kind} cache, or make one: {make_command(kind, dataset_name)}"
    )


def dataset_image_ids(dataset) -> list[str]:
    """Image ids (str) of dataset dicts, or the ids themselves."""
    return [str(d["image_id"]) if isinstance(d, dict) else str(d) for d in dataset]


def check_cache(path: str, kind: str | None, dataset, *, key: str = "", allow_missing: bool = False,
                dataset_name: str = "") -> None:
    """Fail with one clear :class:`CacheError` unless the cache at ``path`` can serve ``dataset``.

    Args:
        path: the cache file.
        kind: what it must hold, "boxes" (SoCo's PROPOSALS.BOX_CACHE) or "masks"
            (DetCon's PROPOSALS.MASK_CACHE); None accepts either.
        dataset: dataset dicts (with ``image_id``) or image ids.
        key: the config key that named the file (for the message).
        allow_missing: images absent from the cache are acceptable
            (``PROPOSALS.MISSING whole_image``), but not a cache sharing no image
            with the dataset.
        dataset_name: the dataset's name, for the message and the suggested command.

    Reads the header and the index only: when the header's image-id digest
    equals the dataset's, the file covers exactly the dataset; otherwise every
    image id is looked up in the index's hash table (an image reported missing
    is certainly missing; one of ~65536 absent ids could pass and is then caught
    at its first read).  A corrupt header or index raises
    :class:`CacheCorruptError`.
    """
    dataset_name = dataset_name or "DATASET"
    if not os.path.isfile(path):
        what = "does not exist" if not os.path.exists(path) else "is not a file"
        hint = make_command(kind, dataset_name, path) if kind else "tools/precompute_proposals.py"
        raise CacheError(f"{_name(key, path)} {what}. Make it with: {hint}")
    ids = dataset_image_ids(dataset)
    with ProposalCache(path) as cache:
        check_cache_kind(cache, kind, key, dataset_name)
        if cache.image_ids_sha256 is not None and cache.image_ids_sha256 == image_ids_digest(ids):
            return
        skipped = cache.skipped
        missing = [i for i, found in zip(ids, cache.may_contain(ids)) if not found and i not in skipped]
        if not missing:
            return
        source = source_dataset(cache.header) or "?"
        stored = len(cache) + len(skipped)
        if allow_missing and len(missing) < len(set(ids)):
            logger.warning("%s: %d of the %d images of %s are not in it; they use the whole image "
                           "(PROPOSALS.MISSING whole_image)", _name(key, path), len(missing), len(ids), dataset_name)
            return
        examples = ", ".join(repr(i) for i in missing[:3])
        raise CacheError(
            f"{_name(key, path)} does not match the dataset: {len(missing)} of the {len(ids)} images of "
            f"{dataset_name} are not in it (e.g. {examples}). It was made from {source!r} ({stored} images). "
            f"Point {key or 'it'} at the cache of {dataset_name}, or make one: "
            f"{make_command(cache.kind, dataset_name)}"
        )


# ------------------------------------------------------------------ whole file


def verify_cache(path: str, progress: bool = False) -> dict:
    """Read and check every byte of a cache; returns a report (``report["ok"]``).

    Format 2: the header's zlib check, the index CRC32, every block's CRC32;
    all formats: every record decodes, keys are sorted and unique, every key
    is found through the hash table, and the counts and statistics agree with
    the header.  Errors are collected per block (a damaged block does not hide
    the others).
    """
    report = {"path": path, "ok": False, "errors": []}
    try:
        cache = ProposalCache(path)
    except (OSError, CacheError) as e:
        report["errors"].append(str(e))
        return report
    with cache:
        h = cache.header
        report.update(format_version=cache.format_version, kind=cache.kind, method=h.get("method"),
                      source=source_dataset(h), images=len(cache), skipped=len(cache.skipped),
                      blocks=cache.num_blocks, bad_blocks=[],
                      checks="CRC32 + decode" if cache.format_version >= 2 else "decode only (format 1: no checksums)")
        blocks = range(cache.num_blocks)
        if progress:
            from tqdm import tqdm

            blocks = tqdm(blocks, unit="block", desc=os.path.basename(path), dynamic_ncols=True, mininterval=0.5)
        keys, records = [], []
        for b in blocks:
            try:
                blk = cache._raw_block(b)
                block_keys = blk.keys()
                for i, k in enumerate(block_keys):
                    rec = blk.record(i)
                    (codec.decode_boxes if cache.kind == "boxes" else codec.decode_mask)(rec)
                    records.append(rec)
                keys += block_keys
            except CacheCorruptError as e:
                report["bad_blocks"].append(b)
                report["errors"].append(str(e))
            except Exception as e:  # format 1: damage shows up as decode errors
                report["bad_blocks"].append(b)
                report["errors"].append(f"{path}: block {b} does not decode ({type(e).__name__}: {e})")
        if not report["bad_blocks"]:
            encoded = [k.encode("utf-8") for k in keys]
            if any(a >= b for a, b in zip(encoded, encoded[1:])):
                report["errors"].append(f"{path}: the image ids are not sorted and unique")
            if len(keys) != len(cache):
                report["errors"].append(f"{path}: {len(keys)} images in the blocks, header says {len(cache)}")
            lost = [k for k in keys if k not in cache]
            if lost:
                report["errors"].append(f"{path}: {len(lost)} images are not found through the index (e.g. {lost[:3]})")
            min_side = int((h.get("generator") or {}).get("min_image_side", 0))
            if record_stats(cache.kind, records, min_side) != h.get("stats"):
                report["errors"].append(f"{path}: the statistics in the header do not match the records")
            if cache.image_ids_sha256 is not None and image_ids_digest(keys + list(cache.skipped)) != cache.image_ids_sha256:
                report["errors"].append(f"{path}: the image-id digest in the header does not match the images")
    report["ok"] = not report["errors"]
    return report


def format_verify_report(report: dict) -> str:
    if "kind" not in report:
        return f"FAILED {report['path']}: " + "; ".join(report["errors"])
    head = (f"{'OK' if report['ok'] else 'FAILED'} {report['path']}: {report['kind']} cache (format "
            f"{report['format_version']}, {report['method']}, from {report['source']!r}), {report['images']} images "
            f"+ {report['skipped']} skipped in {report['blocks']} blocks; checked: {report['checks']}")
    lines = [head]
    if report["bad_blocks"]:
        lines.append(f"  {len(report['bad_blocks'])} of {report['blocks']} blocks are damaged: {report['bad_blocks'][:20]}")
    lines += [f"  {e}" for e in report["errors"][:20]]
    if len(report["errors"]) > 20:
        lines.append(f"  ... and {len(report['errors']) - 20} more")
    return "\n".join(lines)
