"""The embedded demo datasets: real photos, exact deterministic annotations."""
import hashlib
import json
import os

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image
from pycocotools import mask as mask_util

from soco_d2.data.demo import DEMO_CLASSES, DEMO_PHOTOS, ensure_demo_instances, skimage_data_dir


def test_demo_images_are_the_skimage_photos():
    dicts = DatasetCatalog.get("demo_images")
    assert [d["image_id"] for d in dicts] == [os.path.splitext(p)[0] for p in DEMO_PHOTOS]
    for d in dicts:
        assert os.path.dirname(d["file_name"]) == skimage_data_dir()
        with Image.open(d["file_name"]) as im:
            assert im.mode == "RGB" and im.size == (d["width"], d["height"])


def _tree_digest(root):
    digest = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            digest.update(os.path.relpath(path, root).encode())
            digest.update(open(path, "rb").read())
    return digest.hexdigest()


def test_generation_is_deterministic(tmp_path):
    a = ensure_demo_instances(str(tmp_path / "a"))
    b = ensure_demo_instances(str(tmp_path / "b"))
    assert _tree_digest(a) == _tree_digest(b)
    # a second call reuses the cache
    stamp = os.path.getmtime(os.path.join(a, "instances_train.json"))
    ensure_demo_instances(a)
    assert os.path.getmtime(os.path.join(a, "instances_train.json")) == stamp


def test_annotations_are_exact():
    root = ensure_demo_instances()
    for split in ("train", "val"):
        coco = json.load(open(os.path.join(root, f"instances_{split}.json")))
        assert [c["name"] for c in coco["categories"]] == list(DEMO_CLASSES)
        images = {im["id"]: im for im in coco["images"]}
        assert coco["annotations"], split
        for ann in coco["annotations"]:
            im = images[ann["image_id"]]
            h, w = im["height"], im["width"]
            mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects(ann["segmentation"], h, w))).astype(bool)
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert ann["area"] == mask.sum()
            pixels = np.array(Image.open(os.path.join(root, split, im["file_name"])))[mask]
            assert (pixels == pixels[0]).all(), "painted shape must be one flat colour"


def test_instances_load_through_detectron2_coco_loader():
    train = DatasetCatalog.get("demo_instances_train")
    val = DatasetCatalog.get("demo_instances_val")
    assert len(train) == 3 * len(DEMO_PHOTOS) and len(val) == len(DEMO_PHOTOS)
    for d in train + val:
        assert os.path.isfile(d["file_name"])
        for ann in d["annotations"]:
            assert ann["bbox_mode"] == BoxMode.XYWH_ABS
            assert 0 <= ann["category_id"] < len(DEMO_CLASSES)
            assert len(ann["segmentation"][0]) >= 6
    meta = MetadataCatalog.get("demo_instances_val")
    assert meta.evaluator_type == "coco" and meta.thing_classes == list(DEMO_CLASSES)
