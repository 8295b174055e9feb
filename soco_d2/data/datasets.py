"""Unlabeled pretraining datasets, registered in detectron2's ``DatasetCatalog``.

Every pretraining set is a list of dicts with ``file_name`` and ``image_id``
(a string, also the key of the proposal/mask cache); ``height``/``width`` are
added where they are known without decoding every image.

* ``imagenet_train`` / ``imagenet_val``: ``$DETECTRON2_DATASETS/imagenet/{train,val}``
  (class folders of JPEGs; labels are ignored).  ``image_id`` is the path
  relative to the split folder without extension, e.g. ``n01440764/n01440764_10026``.
* ``coco_2017_train_images`` / ``coco_2017_unlabeled_images``: the images of
  ``coco/train2017`` and ``coco/unlabeled2017`` without annotations;
  ``image_id`` is the file stem (``000000000009``).
* ``folder:<path>``: any folder of images, registered on first use by
  ``get_pretrain_dicts`` (and so by ``DATASETS.TRAIN ("folder:/data/imgs",)``).
"""
from __future__ import annotations

import os

from detectron2.data import DatasetCatalog, MetadataCatalog

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FOLDER_PREFIX = "folder:"


def datasets_root() -> str:
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def list_image_files(root: str) -> list[str]:
    """All image files under ``root`` (recursive), sorted by relative path."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append(os.path.join(dirpath, name))
    found.sort(key=lambda p: os.path.relpath(p, root))
    return found


def image_key(path: str, root: str) -> str:
    """The ``image_id`` of an image in a folder dataset: relative path, no extension, '/' separators."""
    rel = os.path.relpath(path, root)
    return os.path.splitext(rel)[0].replace(os.sep, "/")


def load_image_folder(root: str, how_to_get: str = "") -> list[dict]:
    """Dataset dicts (``file_name``, ``image_id``) of every image under ``root``."""
    if not os.path.isdir(root):
        hint = f"\n{how_to_get}" if how_to_get else ""
        raise FileNotFoundError(f"pretraining images not found: {os.path.abspath(root)!r} is not a folder.{hint}")
    files = list_image_files(root)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {os.path.abspath(root)!r}")
    return [{"file_name": path, "image_id": image_key(path, root)} for path in files]


_BUILTIN = {
    "imagenet_train": (
        "imagenet/train",
        "Put ImageNet-1k's train class folders there (imagenet/train/<wnid>/*.JPEG), "
        "or set $DETECTRON2_DATASETS to the folder that holds imagenet/.",
    ),
    "imagenet_val": ("imagenet/val", "Put ImageNet-1k's validation images (in class folders) there."),
    "coco_2017_train_images": (
        "coco/train2017",
        "Download train2017.zip from https://cocodataset.org and unzip it into $DETECTRON2_DATASETS/coco/.",
    ),
    "coco_2017_unlabeled_images": (
        "coco/unlabeled2017",
        "Download unlabeled2017.zip from https://cocodataset.org and unzip it into $DETECTRON2_DATASETS/coco/.",
    ),
}


def register_image_folder(name: str, root: str, how_to_get: str = "") -> None:
    """Register an image folder as an unlabeled pretraining dataset (idempotent)."""
    if name in DatasetCatalog.list():
        return
    DatasetCatalog.register(name, lambda: load_image_folder(root, how_to_get))
    MetadataCatalog.get(name).set(image_root=root, evaluator_type="none")


def register_pretrain_datasets() -> None:
    root = datasets_root()
    for name, (sub, how_to_get) in _BUILTIN.items():
        register_image_folder(name, os.path.join(root, sub), how_to_get)


def get_pretrain_dicts(name: str) -> list[dict]:
    """Dataset dicts of a pretraining set; ``folder:<path>`` names register on first use.

    Labeled detectron2 datasets (``coco_2017_train``...) work too: their
    annotations are kept (DetCon can use ground-truth masks) and ``image_id``
    becomes a string.
    """
    if name.startswith(FOLDER_PREFIX):
        register_image_folder(name, name[len(FOLDER_PREFIX):])
    if name not in DatasetCatalog.list():
        raise KeyError(
            f"dataset {name!r} is not registered; use a registered name ({', '.join(sorted(_BUILTIN))}, "
            f"demo_images, ...) or '{FOLDER_PREFIX}/path/to/images'"
        )
    dicts = DatasetCatalog.get(name)
    for d in dicts:
        d["image_id"] = str(d["image_id"])
    return dicts
