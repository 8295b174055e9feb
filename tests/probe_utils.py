"""Helpers of the probe tests: a tiny R18-FPN probe config and labelled data made
from the embedded demo photos (real photographs, tinted or painted per class)."""
import contextlib
import json
import os

import numpy as np
import soco_d2  # noqa: F401  (compat shims before detectron2)
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from PIL import Image

from soco_d2 import get_pretrain_cfg
from config_utils import project_config_path
from soco_d2.data.demo import demo_photo_paths

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 210, 30)}
PHOTO_SPLITS = {"memory": range(0, 6), "queries": range(6, 9)}  # no photo in both

# R18-FPN, 64 FPN channels, BN at its init (identity in eval mode), CPU, small images.
TINY_PROBE = [
    "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN", "MODEL.FPN.OUT_CHANNELS", 64,
    "TEST.PROBE.IMAGE_RESIZE", 64, "TEST.PROBE.IMAGE_CROP", 64,
    "TEST.PROBE.REGION_FEATURES", ["p2", "p3", "p4", "p5"],
    "TEST.PROBE.REGION_MIN_SIZE", 128, "TEST.PROBE.REGION_MAX_SIZE", 256,
    "TEST.PROBE.BATCH_SIZE", 8, "TEST.PROBE.NUM_WORKERS", 0,
]


def tiny_probe_cfg(*opts):
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(project_config_path("Base-Pretrain-FPN.yaml"))
    cfg.merge_from_list(TINY_PROBE + list(opts))
    return cfg


def _photos():
    return [np.asarray(Image.open(p).convert("RGB")) for p in demo_photo_paths()]


def _crop(photo, rng, size):
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return np.asarray(Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR))


def make_colour_folders(root: str, per_class: dict, size: int = 64, blend: float = 0.7, seed: int = 0) -> dict:
    """``root/<split>/<colour>/*.png``: crops of the demo photos blended with the class
    colour (weight ``blend``); memory and queries come from different photos.  Returns
    split -> folder."""
    photos = _photos()
    folders = {}
    for split, count in per_class.items():
        rng = np.random.default_rng([seed, len(split)])
        for name, colour in COLOURS.items():
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(count):
                photo = photos[PHOTO_SPLITS[split][i % len(PHOTO_SPLITS[split])]]
                image = (1 - blend) * _crop(photo, rng, size) + blend * np.asarray(colour)
                Image.fromarray(image.astype(np.uint8)).save(os.path.join(root, split, name, f"{i:03d}.png"))
        folders[split] = os.path.join(root, split)
    return folders


def make_colour_instances(root: str, split: str, num_images: int, boxes_per_image: int = 2,
                          size: int = 128, seed: int = 0) -> str:
    """A COCO-format instance set: demo-photo crops with flat squares (40 px to the slot
    width - 4) whose category is their colour (shade jittered by +-25), classes used
    round robin (balanced).
    Registered under ``probe_colour_<split>``; returns that name."""
    name = f"probe_colour_{split}"
    image_dir = os.path.join(root, name)
    os.makedirs(image_dir, exist_ok=True)
    photos, rng = _photos(), np.random.default_rng([seed, len(split), 7])
    images, annotations = [], []
    for index in range(num_images):
        image = _crop(photos[PHOTO_SPLITS[split][index % len(PHOTO_SPLITS[split])]], rng, size).copy()
        for slot in range(boxes_per_image):  # side-by-side slots: no overlap
            category = (index * boxes_per_image + slot) % len(COLOURS)
            side = int(rng.integers(40, size // boxes_per_image - 4))
            x = int(rng.integers(slot * size // boxes_per_image, (slot + 1) * size // boxes_per_image - side))
            y = int(rng.integers(0, size - side))
            shade = np.clip(np.asarray(list(COLOURS.values())[category]) + rng.integers(-25, 26, 3), 0, 255)
            image[y : y + side, x : x + side] = shade
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": category + 1,
                                "bbox": [x, y, side, side], "area": side * side, "iscrowd": 0})
        file_name = f"{index:03d}.png"
        Image.fromarray(image).save(os.path.join(image_dir, file_name))
        images.append({"id": index + 1, "file_name": file_name, "height": size, "width": size})
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(COLOURS)]
    with open(os.path.join(root, f"{name}.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return register_colour_instances(root, split)


def register_colour_instances(root: str, split: str) -> str:
    """Register (again, e.g. in a spawned process) the set ``make_colour_instances`` wrote."""
    name = f"probe_colour_{split}"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, os.path.join(root, f"{name}.json"), os.path.join(root, name))
    return name


@contextlib.contextmanager
def one_thread():
    """The classifiers' ops are tiny here: a second intra-op thread only adds wake-up
    latency on a loaded 2-core machine (seconds per linear fit instead of ~40 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
