"""Import from / export to the official SoCo proposal JSON.

The official file (docs/methods/soco.md, Proposals) is one JSON object: image basename
without extension -> list of ``[x, y, w, h]`` integer rects with
``w = max_col - min_col`` (one less than the pixel extent).  It has no image
sizes, so importing needs the dataset (sizes come from the dataset dicts or
the image headers) and maps official keys (basenames) to the dataset's
``image_id`` (e.g. ``n01440764/n01440764_10026`` for ``imagenet_train``).
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

from . import codec
from .boxes import official_rects_to_xyxy, xyxy_to_official_rects
from .cache import CacheWriter, ProposalCache
from .filters import EMPTY_STAGE

logger = logging.getLogger("soco_d2.proposals")


def official_key(image_id: str) -> str:
    """The official JSON key of an image: its basename without extension."""
    return str(image_id).rsplit("/", 1)[-1]


def export_official_json(cache_path: str, json_path: str, key_style: str = "basename") -> int:
    """Write a box cache as official SoCo JSON; returns the number of images.

    ``key_style`` "basename" (the official keys) or "image_id" (our keys).
    Written with ``json.dump``'s default separators, as the official scripts do.
    """
    if key_style not in ("basename", "image_id"):
        raise ValueError(f"key_style must be 'basename' or 'image_id', not {key_style!r}")
    out = {}
    with ProposalCache(cache_path) as cache:
        if cache.kind != "boxes":
            raise ValueError(f"{cache_path} is a {cache.kind} cache; only box caches export to the SoCo JSON")
        for image_id, boxes in cache.items():
            key = official_key(image_id) if key_style == "basename" else image_id
            if key in out:
                raise ValueError(f"two images share the official key {key!r}; export with key_style='image_id'")
            out[key] = xyxy_to_official_rects(boxes).tolist()
    tmp = json_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, json_path)
    return len(out)


def image_size(d: dict) -> tuple:
    """(H, W) of a dataset dict, from its fields or the file header (EXIF orientation applied)."""
    if d.get("height") and d.get("width"):
        return int(d["height"]), int(d["width"])
    from PIL import Image

    with Image.open(d["file_name"]) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def import_official_json(json_path: str, dataset_dicts: list, output: str, source: dict | None = None) -> dict:
    """Official SoCo JSON -> box cache at ``output``; returns counts.

    Rects are stored exactly (clipped to the image only if they stick out,
    which the official generator never produces; counted as ``clipped``).
    Images of the dataset absent from the JSON are not stored; JSON keys
    matching no image are reported.
    """
    with open(json_path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{json_path} is not an official SoCo proposal JSON (expected an object at top level)")
    by_id = {str(d["image_id"]): d for d in dataset_dicts}
    by_base = {}
    for image_id in by_id:
        by_base.setdefault(official_key(image_id), []).append(image_id)
    header = {
        "method": "selective_search",
        "generator": {"imported_from": os.path.basename(json_path), "filter_stages": ["main"]},
        "versions": {},
        "source": source or {},
    }
    matches = {}
    for key in data:
        ids = [key] if key in by_id else by_base.get(key, [])
        if len(ids) > 1:
            raise ValueError(f"official key {key!r} matches several images {ids[:3]}")
        if ids:
            matches[key] = ids[0]
    if not matches:  # refuse before writing anything: an empty cache would only fail later
        name = (source or {}).get("dataset", "the dataset")
        raise ValueError(
            f"none of the {len(data)} keys of {json_path} (e.g. {list(data)[:3]}) matches an image of {name} "
            f"({len(by_id)} images, e.g. {list(by_id)[:3]}): keys must be image basenames without extension "
            "or image_ids. Nothing was written; check --dataset / --image-dir"
        )
    counts = {"images": 0, "boxes": 0, "clipped": 0, "unmatched_keys": len(data) - len(matches), "missing_images": 0}
    with CacheWriter(output, "boxes", header) as w:
        seen = set()
        for key, rects in data.items():
            if key not in matches:
                continue
            image_id = matches[key]
            H, W = image_size(by_id[image_id])
            rects = [r[:4] for r in rects]  # only the first four numbers are read officially
            boxes = official_rects_to_xyxy(rects) if rects else np.zeros((0, 4), np.int64)
            clipped = boxes.copy()
            clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, W)
            clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, H)
            clipped = clipped[(clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])]
            counts["clipped"] += int(len(boxes) != len(clipped) or not np.array_equal(boxes, clipped))
            w.add_record(image_id, codec.encode_boxes(clipped, H, W, 0 if len(clipped) else EMPTY_STAGE))
            seen.add(image_id)
            counts["images"] += 1
            counts["boxes"] += len(clipped)
        counts["missing_images"] = len(set(by_id) - seen)
    if counts["unmatched_keys"]:
        logger.warning("%d keys of %s match no image of the dataset", counts["unmatched_keys"], json_path)
    return counts


def official_json_bytes(items) -> int:
    """Size of the official JSON of ``(image_id, boxes)`` pairs (for the benchmark)."""
    return len(json.dumps({official_key(k): xyxy_to_official_rects(b).tolist() for k, b in items}).encode("utf-8"))
