"""Labelled data for the probes: records, and the mappers that read them.

* image level: a labelled image folder, one sub-folder per class (ImageNet's
  ``train/<wnid>/*.JPEG`` layout); named by a registered folder dataset
  (``imagenet_train``, ``imagenet_val``: its metadata's ``image_root``),
  ``folder:<path>`` or a plain path;
* object level: a registered detectron2 instance dataset (``coco_2017_val``,
  ``demo_instances_train``, ...): every non-crowd ground-truth box with its
  contiguous category id, classes from the metadata's ``thing_classes``.

A record is a dict with ``file_name`` and ``index`` (its position in the
list) plus ``label`` (image level) or ``boxes`` / ``labels`` (object level).
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from ..data.datasets import FOLDER_PREFIX, list_image_files

logger = logging.getLogger(__name__)


# ------------------------------------------------------------ image level
def resolve_image_folder(name: str) -> str:
    """The folder of an image-level probe dataset (see the module docstring)."""
    if name.startswith(FOLDER_PREFIX):
        root = name[len(FOLDER_PREFIX):]
    elif name in DatasetCatalog.list() and MetadataCatalog.get(name).get("image_root"):
        root = MetadataCatalog.get(name).image_root
    else:
        root = name
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"image probe dataset {name!r}: {os.path.abspath(root)!r} is not a folder; give a labelled image "
            f"folder (one sub-folder per class) as a path, '{FOLDER_PREFIX}<path>' or a registered folder "
            "dataset such as imagenet_val ($DETECTRON2_DATASETS/imagenet/val)"
        )
    return root


def labelled_image_folder(root: str) -> tuple[list[dict], list[str]]:
    """Records of every image under ``root/<class>/`` (sorted) and the class names (sorted)."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    records = []
    for label, name in enumerate(classes):
        for path in list_image_files(os.path.join(root, name)):
            records.append({"file_name": path, "label": label, "index": len(records)})
    if not records:
        raise FileNotFoundError(f"no images in class sub-folders of {os.path.abspath(root)!r}")
    return records, classes


def align_classes(records: list[dict], classes: list[str], reference: list[str]) -> tuple[list[dict], list[str]]:
    """Relabel ``records`` into ``reference``'s class order; classes ``reference`` lacks
    are appended (they can never be predicted: the memory has no example of them)."""
    extra = [c for c in classes if c not in reference]
    if extra:
        logger.warning("%d query classes have no memory images (always counted wrong): %s", len(extra), extra[:5])
    names = list(reference) + extra
    position = {c: names.index(c) for c in classes}
    relabelled = [{**r, "label": position[classes[r["label"]]]} for r in records]
    return relabelled, names


# ------------------------------------------------------------ object level
def instance_records(dataset_name: str) -> tuple[list[dict], list[str]]:
    """Records of the images of a detectron2 instance dataset that have non-crowd boxes."""
    if dataset_name not in DatasetCatalog.list():
        raise KeyError(f"region probe dataset {dataset_name!r} is not a registered detectron2 dataset")
    dicts = DatasetCatalog.get(dataset_name)  # COCO loaders set thing_classes while loading
    classes = MetadataCatalog.get(dataset_name).get("thing_classes")
    if not classes:
        raise ValueError(f"{dataset_name!r} has no thing_classes in its metadata: not an instance dataset")
    records, skipped_crowd = [], 0
    for d in dicts:
        boxes, labels = [], []
        for ann in d.get("annotations", []):
            if ann.get("iscrowd", 0):
                skipped_crowd += 1
                continue
            boxes.append(BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS))
            labels.append(int(ann["category_id"]))
        if boxes:
            record = {k: d[k] for k in ("height", "width") if d.get(k)}  # checked against the decoded image
            records.append({
                **record, "file_name": d["file_name"],
                "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                "labels": np.asarray(labels, dtype=np.int64), "index": len(records),
            })
    if not records:
        raise ValueError(f"{dataset_name!r} has no image with a non-crowd box")
    if skipped_crowd:
        logger.info("%s: %d crowd boxes left out", dataset_name, skipped_crowd)
    bad = {int(l) for r in records for l in r["labels"] if not 0 <= l < len(classes)}
    if bad:
        raise ValueError(f"{dataset_name!r}: category ids {sorted(bad)[:5]} outside thing_classes (not contiguous)")
    return records, list(classes)


def evenly_spaced(records: list[dict], max_count: int) -> list[dict]:
    """At most ``max_count`` records spread evenly over the list (class-sorted folders
    keep every class); 0 = all.  Deterministic; ``index`` is renumbered."""
    if max_count <= 0 or max_count >= len(records):
        return records
    picks = np.linspace(0, len(records), max_count, endpoint=False).astype(int)
    return [{**records[i], "index": j} for j, i in enumerate(picks)]


# ------------------------------------------------------------ mappers
def resize_transform(image: np.ndarray, short_edge: int, max_size: int = 1 << 30) -> T.ResizeTransform:
    """detectron2's test-time ``ResizeShortestEdge`` of one size, without its draw
    from numpy's global random state (the probes run inside training)."""
    h, w = image.shape[:2]
    new_h, new_w = T.ResizeShortestEdge.get_output_shape(h, w, short_edge, max_size)
    return T.ResizeTransform(h, w, new_h, new_w)


class ImageProbeMapper:
    """Image -> resize (shorter side ``resize``) -> centre crop ``crop`` x ``crop``
    (the standard ImageNet evaluation transform), as a (C, H, W) uint8 tensor."""

    def __init__(self, resize: int = 256, crop: int = 224, image_format: str = "RGB"):
        if crop > resize:
            raise ValueError(f"TEST.PROBE.IMAGE_CROP {crop} is larger than IMAGE_RESIZE {resize}")
        self.resize, self.crop, self.image_format = resize, crop, image_format

    def __call__(self, record: dict) -> dict:
        image = utils.read_image(record["file_name"], format=self.image_format)
        image = resize_transform(image, self.resize).apply_image(image)
        h, w = image.shape[:2]
        top, left = (h - self.crop) // 2, (w - self.crop) // 2
        image = image[top : top + self.crop, left : left + self.crop]
        return {
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "label": record["label"],
            "index": record["index"],
        }


class RegionProbeMapper:
    """Image resized as detectron2's test-time ``ResizeShortestEdge(min_size, max_size)``,
    its boxes moved with it and clipped; boxes with a side below ``min_box_size`` px
    (after resizing) are left out."""

    def __init__(self, min_size: int = 800, max_size: int = 1333, image_format: str = "RGB", min_box_size: float = 0.0):
        self.min_size, self.max_size = min_size, max_size
        self.image_format = image_format
        self.min_box_size = min_box_size

    def __call__(self, record: dict) -> dict:
        image = utils.read_image(record["file_name"], format=self.image_format)
        utils.check_image_size(record, image)
        transform = resize_transform(image, self.min_size, self.max_size)
        image = transform.apply_image(image)
        h, w = image.shape[:2]
        boxes = transform.apply_box(record["boxes"]).clip(min=0)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(max=w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(max=h)
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        keep = (sides > 0) & (sides >= self.min_box_size)
        return {
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "boxes": torch.as_tensor(boxes[keep], dtype=torch.float32),
            "labels": torch.as_tensor(record["labels"][keep], dtype=torch.long),
            "index": record["index"],
        }
