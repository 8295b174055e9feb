"""Semi-supervised COCO: fine-tuning on a fixed fraction of the labelled images.

Registered at import: ``coco_2017_train_{1,2,5,10}pct_seed{1..5}``.  Any other
percentage, seed or source through :func:`register_coco_subset`, or by name in
a config (``DATASETS.TRAIN ("coco_2017_train_20pct_seed3",)``) once
:func:`register_subsets_in` has seen it (``tools/transfer_net.py`` does).

**Sampling rule** (the same in every process, on every machine, with any
numpy/Python version; nothing depends on a random generator's state):

1. the pool is the source's images with at least one non-crowd annotation,
   which is what detectron2 trains on (117,266 of COCO train2017's 118,287);
2. images are ranked by the SHA-256 hex digest of ``"<seed>:<image id>"``
   (ties, which do not happen, by id);
3. the subset is the first ``max(1, floor(N * percent / 100))`` of that
   ranking: 1 % = 1,172, 2 % = 2,345, 5 % = 5,863, 10 % = 11,726 images.

So the fractions are **nested**: for one seed, 1 % is inside 2 %, 2 % inside
5 %, and so on.  Subsets with other seeds are independent draws.

**Id lists.**  :func:`export_id_list` writes a subset's COCO image ids, one per
line.  :func:`load_id_list` reads the files other papers publish:

* plain text, one image id per line (``#`` comments allowed): ours;
* a COCO-format json (its ``images[*].id``): STAC / SoftTeacher / mmdetection's
  ``instances_train2017.{fold}@{percent}.json`` and CutLER's
  ``{N}perc_instances_train2017.json``;
* unbiased-teacher's ``dataseed/COCO_supervision.txt``: json
  ``{percent: {seed: [positions]}}`` (percent as ``"1.0"``, seeds ``"0"``...),
  positions in detectron2's ``coco_2017_train`` after dropping images without
  non-crowd annotations (ordered by image id): needs ``percent`` and ``seed``.

Such a list becomes a dataset with :func:`register_coco_subset_from_ids`, or by
name: ``<source>@<path>`` (``coco_2017_train@splits/instances_train2017.1@1.json``;
``...@COCO_supervision.txt#1.0/0`` for percent 1.0, seed 0).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re

from detectron2.data import DatasetCatalog, MetadataCatalog

logger = logging.getLogger(__name__)

STANDARD_PERCENTS = (1, 2, 5, 10)
STANDARD_SEEDS = (1, 2, 3, 4, 5)
COCO_SOURCE = "coco_2017_train"
_NAME = re.compile(r"^(?P<source>.+)_(?P<percent>\d+(?:\.\d+)?)pct_seed(?P<seed>\d+)$")


# ---------------------------------------------------------------- the rule
def subset_size(pool_size: int, percent: float) -> int:
    """``max(1, floor(pool_size * percent / 100))`` (percent in (0, 100])."""
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    return max(1, math.floor(pool_size * percent / 100 + 1e-9))


def _rank_key(seed: int, image_id) -> str:
    return hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()


def sample_image_ids(image_ids, percent: float, seed: int) -> list:
    """The ids of the subset (see the module docstring), sorted."""
    pool = list(image_ids)
    if not pool:
        raise ValueError("cannot sample a subset of an empty pool of images")
    ranked = sorted(pool, key=lambda i: (_rank_key(seed, i), str(i)))
    return sorted(ranked[: subset_size(len(pool), percent)])


def has_non_crowd_annotation(record: dict) -> bool:
    """detectron2's training filter: an image stays if one annotation is not a crowd."""
    return any(ann.get("iscrowd", 0) == 0 for ann in record.get("annotations", []))


def subset_name(percent: float, seed: int, source: str = COCO_SOURCE) -> str:
    return f"{source}_{_percent_text(percent)}pct_seed{seed}"


def _percent_text(percent: float) -> str:
    return str(int(percent)) if float(percent).is_integer() else repr(float(percent))


def semi_supervised_schedule(percent: float, full_iters: int = 90000, full_steps=(60000, 80000),
                             min_iters: int = 3600) -> tuple[int, tuple[int, ...]]:
    """``(MAX_ITER, STEPS)`` for fine-tuning on ``percent`` % of the images.

    The 1x schedule's epochs on the subset (iterations scaled by the fraction,
    steps at the same fractions of training), but at least ``min_iters``
    iterations: CutLER's COCO-Semisupervised configs (5 % = 4,500, 10 % = 9,000,
    20 % = 18,000 iterations; 1 % and 2 % = 3,600) at 16 images per batch.
    """
    iters = max(min_iters, round(full_iters * percent / 100))
    return iters, tuple(round(iters * s / full_iters) for s in full_steps)


# ---------------------------------------------------------------- registration
def _copy_metadata(source: str, name: str, **extra) -> None:
    meta = MetadataCatalog.get(source).as_dict()
    # no json_file: an evaluator on the subset must build its ground truth from the subset
    kept = {k: v for k, v in meta.items() if k not in ("name", "json_file")}
    MetadataCatalog.get(name).set(**kept, subset_of=source, **extra)


def _source_dicts(source: str) -> list[dict]:
    if source not in DatasetCatalog.list():
        raise KeyError(f"source dataset {source!r} is not registered")
    return DatasetCatalog.get(source)


def load_coco_subset(source: str, percent: float, seed: int) -> list[dict]:
    """Dataset dicts of the subset of ``source`` (the rule of the module docstring)."""
    pool = [d for d in _source_dicts(source) if has_non_crowd_annotation(d)]
    keep = set(sample_image_ids([d["image_id"] for d in pool], percent, seed))
    return [d for d in pool if d["image_id"] in keep]


def register_coco_subset(percent: float, seed: int, source: str = COCO_SOURCE, name: str | None = None) -> str:
    """Register ``percent`` % of ``source``'s images drawn with ``seed``; returns the name
    (default ``<source>_<percent>pct_seed<seed>``).  Idempotent; nothing is loaded until used."""
    subset_size(1, percent)  # validates percent
    name = name or subset_name(percent, seed, source)
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: load_coco_subset(source, percent, seed))
        _copy_metadata(source, name, subset_percent=percent, subset_seed=seed)
    return name


def register_coco_subset_from_ids(name: str, image_ids, source: str = COCO_SOURCE) -> str:
    """Register the images of ``source`` whose ids are ``image_ids`` (e.g. from :func:`load_id_list`).

    Loading fails if an id is not in ``source`` (a list made for another split or version).
    """
    wanted = {_as_id(i) for i in image_ids}
    if not wanted:
        raise ValueError(f"empty id list for {name!r}")

    def load():
        dicts = [d for d in _source_dicts(source) if d["image_id"] in wanted]
        missing = wanted - {d["image_id"] for d in dicts}
        if missing:
            raise ValueError(f"{len(missing)} of the {len(wanted)} image ids of {name!r} are not in {source!r}, "
                             f"e.g. {sorted(missing, key=str)[:5]}")
        return dicts

    if name in DatasetCatalog.list():
        raise ValueError(f"dataset {name!r} is already registered")
    DatasetCatalog.register(name, load)
    _copy_metadata(source, name, subset_size=len(wanted))
    return name


def register_coco_subsets(source: str = COCO_SOURCE) -> list[str]:
    """The standard names ``<source>_{1,2,5,10}pct_seed{1..5}`` (skipped if ``source`` is unknown)."""
    if source not in DatasetCatalog.list():
        return []
    return [register_coco_subset(p, s, source) for p in STANDARD_PERCENTS for s in STANDARD_SEEDS]


def register_subsets_in(names) -> list[str]:
    """Register the names of the forms ``<source>_<p>pct_seed<s>`` and ``<source>@<id file>[#<percent>/<seed>]``
    that are not registered yet (other names are left alone); returns those it registered."""
    registered = []
    for name in names:
        if name in DatasetCatalog.list():
            continue
        match = _NAME.match(name)
        if match and match["source"] in DatasetCatalog.list():
            registered.append(register_coco_subset(float(match["percent"]), int(match["seed"]), match["source"], name))
        elif "@" in name and name.split("@", 1)[0] in DatasetCatalog.list():
            source, path = name.split("@", 1)
            percent = seed = None
            if "#" in path:
                path, fragment = path.rsplit("#", 1)
                percent, seed = fragment.split("/")
            registered.append(register_coco_subset_from_ids(
                name, load_id_list(path, percent=percent, seed=seed, source=source), source))
    return registered


# ---------------------------------------------------------------- id lists
def export_id_list(name_or_ids, path: str) -> str:
    """Write the COCO image ids of a registered dataset (or of a list of ids), sorted, one per line."""
    ids = ([d["image_id"] for d in DatasetCatalog.get(name_or_ids)] if isinstance(name_or_ids, str)
           else list(name_or_ids))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(f"{i}\n" for i in sorted(ids, key=lambda i: (str(type(i)), i)))
    return path


def _as_id(value):
    """COCO image ids are integers; keep other ids (strings) as they are."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def load_id_list(path: str, percent=None, seed=None, source: str = COCO_SOURCE) -> list:
    """Image ids from a published split file (formats: module docstring), in file order."""
    with open(path) as f:
        text = f.read()
    stripped = text.lstrip()
    if not stripped.startswith(("{", "[")):
        ids = [_as_id(line.split("#", 1)[0].strip()) for line in text.splitlines()]
        return [i for i in ids if i != ""]
    data = json.loads(text)
    if isinstance(data, list):
        return [_as_id(i) for i in data]
    if "images" in data:
        return [_as_id(image["id"]) for image in data["images"]]
    return _unbiased_teacher_ids(data, path, percent, seed, source)


def _unbiased_teacher_ids(data: dict, path: str, percent, seed, source: str) -> list:
    if percent is None or seed is None:
        raise ValueError(f"{path} is an index file {{percent: {{seed: [positions]}}}} "
                         f"(percents {sorted(data, key=float)}): give percent and seed")
    by_percent = {float(k): v for k, v in data.items()}
    if float(percent) not in by_percent:
        raise KeyError(f"percent {percent} not in {path} (has {sorted(by_percent)})")
    folds = by_percent[float(percent)]
    if str(seed) not in folds:
        raise KeyError(f"seed {seed} not in {path} for percent {percent} (has {sorted(folds, key=int)})")
    positions = folds[str(seed)]
    pool = [d for d in _source_dicts(source) if has_non_crowd_annotation(d)]
    pool.sort(key=lambda d: d["image_id"])
    if positions and max(positions) >= len(pool):
        raise ValueError(f"{path} indexes position {max(positions)} but {source!r} has {len(pool)} images "
                         "with annotations: it was made for another list")
    expected = subset_size(len(pool), float(percent))
    if len(positions) != expected:
        logger.warning("%s has %d positions for %s%% where %d images give %d: made for a differently "
                       "filtered list?", path, len(positions), percent, len(pool), expected)
    return [pool[i]["image_id"] for i in positions]


def main(argv=None) -> None:
    """``python -m soco_d2.data.subsets export NAME FILE``: write a registered subset's image ids."""
    import argparse

    import soco_d2  # noqa: F401  (registers the datasets)

    parser = argparse.ArgumentParser(description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write the image ids of a dataset, one per line")
    export.add_argument("name", help="a registered dataset, a <source>_<p>pct_seed<s> name or <source>@<id file>")
    export.add_argument("output")
    args = parser.parse_args(argv)
    register_subsets_in([args.name])
    path = export_id_list(args.name, args.output)
    print(f"wrote {sum(1 for _ in open(path))} image ids of {args.name} to {path}")


if __name__ == "__main__":
    main()
