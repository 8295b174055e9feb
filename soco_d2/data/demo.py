"""Embedded demo data: the colour photographs shipped inside scikit-image.

* ``demo_images``: the photos themselves, an unlabeled pretraining set read
  from the installed ``skimage/data`` folder (nothing is copied into git).
* ``demo_instances_train`` / ``demo_instances_val``: a small COCO-format
  instance-segmentation set made from those photos by painting flat-coloured
  shapes (discs, triangles, squares) on them.  The painted pixels are exactly
  pycocotools' rasterisation of the stored polygons, so masks, boxes and areas
  are exact and "perfect" predictions score AP 100.  It is generated
  deterministically on first use into ``demo_root()`` and loaded with
  detectron2's own COCO loader.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
from PIL import Image

# The colour photographs of skimage.data that ship inside the wheel.
DEMO_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
)
DEMO_CLASSES = ("disc", "triangle", "square")
# Bump when the generator changes: a cache with another version is rebuilt.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SplitSpec:
    name: str
    variants_per_photo: int
    seed: int


SPLITS = (SplitSpec("train", 3, 1000), SplitSpec("val", 1, 2000))
MAX_SIDE = 320  # photos are downscaled so CPU transfer runs stay small


def skimage_data_dir() -> str:
    import skimage.data

    return os.path.dirname(skimage.data.__file__)


def demo_photo_paths() -> list[str]:
    root = skimage_data_dir()
    paths = [os.path.join(root, name) for name in DEMO_PHOTOS]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"scikit-image does not ship {missing}; install scikit-image>=0.19")
    return paths


def demo_root() -> str:
    """Cache folder of the generated instance set: ``$SOCO_D2_DEMO_ROOT`` if set,
    else ``$DETECTRON2_DATASETS/soco_d2_demo`` (``datasets/soco_d2_demo``)."""
    override = os.environ.get("SOCO_D2_DEMO_ROOT")
    if override:
        return os.path.abspath(override)
    return os.path.abspath(os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "soco_d2_demo"))


def load_demo_images() -> list[dict]:
    """Dataset dicts of the unlabeled photos (``image_id`` is the photo's stem)."""
    dicts = []
    for path in demo_photo_paths():
        with Image.open(path) as im:
            width, height = im.size
        dicts.append(
            {"file_name": path, "height": height, "width": width, "image_id": os.path.splitext(os.path.basename(path))[0]}
        )
    return dicts


# --------------------------------------------------------------------- shapes
def _shape_polygon(kind: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    n_vertices = {"disc": 32, "triangle": 3, "square": 4}[kind]
    t = angle + 2 * np.pi * np.arange(n_vertices) / n_vertices
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)


def _rasterize(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    from pycocotools import mask as mask_util

    rles = mask_util.frPyObjects([polygon.reshape(-1).tolist()], height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def _paint_image(photo: np.ndarray, rng: np.random.Generator):
    """Crop/scale one photo and paint 2-4 non-overlapping shapes on it."""
    h, w = photo.shape[:2]
    scale = rng.uniform(0.7, 1.0)
    ch, cw = int(h * scale), int(w * scale)
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(photo[y0 : y0 + ch, x0 : x0 + cw])
    factor = MAX_SIDE / max(ch, cw)
    crop = crop.resize((max(1, round(cw * factor)), max(1, round(ch * factor))), Image.BILINEAR)
    image = np.array(crop)
    height, width = image.shape[:2]

    annotations, boxes = [], []
    for _ in range(int(rng.integers(2, 5))):
        for _attempt in range(50):
            kind = DEMO_CLASSES[int(rng.integers(len(DEMO_CLASSES)))]
            radius = rng.uniform(18, 0.2 * min(height, width))
            cx = rng.uniform(radius + 1, width - radius - 1)
            cy = rng.uniform(radius + 1, height - radius - 1)
            box = (cx - radius - 3, cy - radius - 3, cx + radius + 3, cy + radius + 3)
            if all(box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1] for b in boxes):
                break
        else:
            continue
        boxes.append(box)
        polygon = np.round(_shape_polygon(kind, cx, cy, radius, rng.uniform(0, 2 * np.pi)), 2)
        mask = _rasterize(polygon, height, width)
        image[mask] = rng.integers(0, 256, size=3, dtype=np.uint8)
        annotations.append((DEMO_CLASSES.index(kind) + 1, polygon, mask))
    return image, annotations


def _build_split(split: SplitSpec, photos: list[np.ndarray], out_dir: str) -> None:
    from pycocotools import mask as mask_util

    image_dir = os.path.join(out_dir, split.name)
    os.makedirs(image_dir)
    images, anns = [], []
    for photo_index, photo in enumerate(photos):
        for variant in range(split.variants_per_photo):
            rng = np.random.default_rng([split.seed, photo_index, variant])
            image, objects = _paint_image(photo, rng)
            image_id = len(images) + 1
            file_name = f"{os.path.splitext(DEMO_PHOTOS[photo_index])[0]}_{variant}.png"
            Image.fromarray(image).save(os.path.join(image_dir, file_name))
            height, width = image.shape[:2]
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            for category_id, polygon, mask in objects:
                ys, xs = np.nonzero(mask)
                x0, y0 = float(xs.min()), float(ys.min())
                rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": image_id,
                        "category_id": category_id,
                        # the tight box of the mask's pixels, in COCO's XYWH
                        "bbox": [x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0],
                        "area": float(mask_util.area(rle)),
                        "iscrowd": 0,
                        "segmentation": [polygon.reshape(-1).tolist()],
                    }
                )
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(DEMO_CLASSES)]
    with open(os.path.join(out_dir, f"instances_{split.name}.json"), "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": categories}, f)


def ensure_demo_instances(root: str | None = None) -> str:
    """Generate the demo instance set under ``root`` unless it is already there.

    Safe when several processes race: each builds into its own temporary folder
    and the first atomic rename wins.  Returns the root folder.
    """
    root = root or demo_root()
    stamp = os.path.join(root, "VERSION")
    if os.path.isfile(stamp) and open(stamp).read().strip() == str(GENERATOR_VERSION):
        return root
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    photos = [np.array(Image.open(p).convert("RGB")) for p in demo_photo_paths()]
    tmp = tempfile.mkdtemp(prefix=".soco_d2_demo-", dir=parent)
    try:
        for split in SPLITS:
            _build_split(split, photos, tmp)
        with open(os.path.join(tmp, "VERSION"), "w") as f:
            f.write(f"{GENERATOR_VERSION}\n")
        if os.path.isdir(root):  # an outdated version: replace it
            shutil.rmtree(root, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:  # another process won the race
            if not os.path.isfile(stamp):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def demo_instances_paths(split: str, root: str | None = None) -> tuple[str, str]:
    root = root or demo_root()
    return os.path.join(root, f"instances_{split}.json"), os.path.join(root, split)


def register_demo_datasets() -> None:
    """Register ``demo_images`` and ``demo_instances_{train,val}`` (idempotent)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    if "demo_images" not in DatasetCatalog.list():
        DatasetCatalog.register("demo_images", load_demo_images)
        MetadataCatalog.get("demo_images").set(evaluator_type="none", source="skimage.data")

    for split in SPLITS:
        name = f"demo_instances_{split.name}"
        if name in DatasetCatalog.list():
            continue

        def load(split=split.name, name=name):
            json_file, image_root = demo_instances_paths(split, ensure_demo_instances())
            return load_coco_json(json_file, image_root, name)

        json_file, image_root = demo_instances_paths(split.name)
        MetadataCatalog.get(name).set(
            json_file=json_file, image_root=image_root, evaluator_type="coco", thing_classes=list(DEMO_CLASSES)
        )
        DatasetCatalog.register(name, load)
