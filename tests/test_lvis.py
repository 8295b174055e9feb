"""LVIS v1 transfer: a tiny LVIS v1 dataset in the real layout, made from the
embedded demo instance set, through detectron2's LVIS loader, the
repeat-factor sampler, the transfer trainer and ``LVISEvaluator``.

Layout (what detectron2's builtin ``lvis_v1_*`` names read):
``$DETECTRON2_DATASETS/lvis/lvis_v1_{train,val}.json`` and the images under
``coco/{train,val}2017/<12-digit id>.jpg``, found through each image's
``coco_url`` (LVIS v1 has no ``file_name``; like the real val split, some val
images live in train2017).  The three demo shapes become three real LVIS v1
categories, one per frequency group.
"""
import copy
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image

from soco_d2.data.demo import demo_instances_paths, ensure_demo_instances
from soco_d2.engine import TransferTrainer, build_transfer_evaluator

from test_transfer import transfer_cfg

pytest.importorskip("lvis")  # installed by `make venv` (README, Protocols)

LVIS_CONFIG = "transfer/lvis_v1_mask_rcnn_R_50_FPN_1x.yaml"
# demo category id -> an LVIS v1 category of that shape: one frequent, one rare, one common
DEMO_TO_LVIS = {1: 474, 2: 1119, 3: 341}  # disc -> frisbee (f), triangle -> triangle_(musical_instrument) (r), square -> cube (c)
VAL_IMAGES_IN_TRAIN2017 = 2  # LVIS v1 val also holds COCO train2017 images


def _lvis_split(coco: dict, split: str, first_id: int, root: str) -> dict:
    """The demo split as an LVIS v1 json; copies its images as COCO-named JPEGs."""
    images, id_map = [], {}
    for k, image in enumerate(coco["images"]):
        image_id = first_id + k
        id_map[image["id"]] = image_id
        folder = "train2017" if split == "train" or k < VAL_IMAGES_IN_TRAIN2017 else "val2017"
        name = f"{image_id:012d}.jpg"
        os.makedirs(os.path.join(root, "coco", folder), exist_ok=True)
        pixels = Image.open(os.path.join(demo_instances_paths(split)[1], image["file_name"])).convert("RGB")
        pixels.save(os.path.join(root, "coco", folder, name), quality=95)
        images.append({
            "id": image_id, "height": image["height"], "width": image["width"], "license": 1,
            "date_captured": "2013-11-14 11:18:45",
            "coco_url": f"http://images.cocodataset.org/{folder}/{name}",
            "flickr_url": f"http://farm1.staticflickr.com/1/{image_id}_0.jpg",
            "neg_category_ids": [], "not_exhaustive_category_ids": [],
        })
    annotations = []
    for ann in coco["annotations"]:
        annotations.append({
            "id": len(annotations) + 1, "image_id": id_map[ann["image_id"]],
            "category_id": DEMO_TO_LVIS[ann["category_id"]], "bbox": ann["bbox"], "area": ann["area"],
            "segmentation": ann["segmentation"],
        })
    present = {}
    for ann in annotations:
        present.setdefault(ann["image_id"], set()).add(ann["category_id"])
    for image in images:  # verified absent (federated negatives): the demo categories not in the image
        image["neg_category_ids"] = sorted(set(DEMO_TO_LVIS.values()) - present.get(image["id"], set()))
    images[-1]["not_exhaustive_category_ids"] = sorted(present[images[-1]["id"]])[:1]
    categories = []
    for cat in LVIS_CATEGORIES:
        anns = [a for a in annotations if a["category_id"] == cat["id"]]
        categories.append(dict(cat, image_count=len({a["image_id"] for a in anns}), instance_count=len(anns)))
    return {
        "info": {"description": "tiny LVIS v1 from soco_d2's demo set", "version": "1.0", "year": 2020},
        "licenses": [{"id": 1, "name": "Attribution License", "url": "http://creativecommons.org/licenses/by/2.0/"}],
        "images": images, "annotations": annotations, "categories": categories,
    }


@pytest.fixture(scope="session")
def tiny_lvis():
    root = os.environ["DETECTRON2_DATASETS"]
    ensure_demo_instances()
    os.makedirs(os.path.join(root, "lvis"), exist_ok=True)
    for split, first_id in (("train", 1001), ("val", 2001)):
        coco = json.load(open(demo_instances_paths(split)[0]))
        with open(os.path.join(root, "lvis", f"lvis_v1_{split}.json"), "w") as f:
            json.dump(_lvis_split(coco, split, first_id, root), f)
    return root


def test_tiny_lvis_has_the_real_fields_and_all_frequency_groups(tiny_lvis):
    val = json.load(open(os.path.join(tiny_lvis, "lvis", "lvis_v1_val.json")))
    assert len(val["categories"]) == 1203
    used = {a["category_id"] for a in val["annotations"]}
    assert {c["frequency"] for c in val["categories"] if c["id"] in used} == {"r", "c", "f"}
    records = DatasetCatalog.get("lvis_v1_val")
    assert len(records) == 9 and sum("train2017" in r["file_name"] for r in records) == VAL_IMAGES_IN_TRAIN2017
    assert all(os.path.isfile(r["file_name"]) for r in records)
    assert any(r["not_exhaustive_category_ids"] for r in records) and any(r["neg_category_ids"] for r in records)
    assert {a["category_id"] for r in records for a in r["annotations"]} == {i - 1 for i in DEMO_TO_LVIS.values()}


def _predictions(records, labels=None):
    """One prediction per ground-truth object: its exact box and mask, score 1."""
    from pycocotools import mask as mask_util

    outputs = []
    for record in records:
        h, w = record["height"], record["width"]
        anns = record["annotations"]
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.tensor(
            [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns], dtype=torch.float32))
        inst.scores = torch.ones(len(anns))
        inst.pred_classes = torch.tensor([a["category_id"] for a in anns])
        masks = [mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w))) for a in anns]
        inst.pred_masks = torch.from_numpy(np.stack(masks).astype(bool))
        outputs.append(inst)
    if labels is not None:
        start = 0
        for inst in outputs:
            inst.pred_classes = labels[start:start + len(inst)]
            start += len(inst)
    return outputs


def _evaluate(cfg, records, outputs, out_dir):
    evaluator = build_transfer_evaluator(cfg, "lvis_v1_val", str(out_dir))
    evaluator.reset()
    for record, inst in zip(records, outputs):
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": inst}])
    return evaluator.evaluate()


def test_lvis_perfect_predictions_score_ap_100_and_shuffled_ones_less(tiny_lvis, tmp_path):
    from detectron2.evaluation import LVISEvaluator

    cfg = transfer_cfg(LVIS_CONFIG, tmp_path)
    assert isinstance(build_transfer_evaluator(cfg, "lvis_v1_val", str(tmp_path)), LVISEvaluator)
    records = DatasetCatalog.get("lvis_v1_val")
    perfect = _evaluate(cfg, records, _predictions(records), tmp_path / "perfect")
    for task in ("bbox", "segm"):
        for metric in ("AP", "AP50", "AP75", "APr", "APc", "APf"):
            assert perfect[task][metric] == pytest.approx(100.0), (task, metric)

    # federated evaluation: a confident detection of a category that the image neither
    # has nor lists as verified absent is not counted against the detector
    with_unverified = _predictions(records)
    extra = with_unverified[0]
    spurious = Instances(extra.image_size, pred_boxes=Boxes(extra.pred_boxes.tensor[:1]), scores=torch.ones(1),
                         pred_classes=torch.tensor([0]), pred_masks=extra.pred_masks[:1])  # LVIS id 1, aerosol_can
    with_unverified[0] = Instances.cat([extra, spurious])
    assert _evaluate(cfg, records, with_unverified, tmp_path / "unverified")["bbox"]["AP"] == pytest.approx(100.0)

    labels = torch.cat([inst.pred_classes for inst in _predictions(records)])
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert not torch.equal(shuffled, labels)
    worse = _evaluate(cfg, records, _predictions(records, shuffled), tmp_path / "shuffled")
    for task in ("bbox", "segm"):
        assert 0.0 <= worse[task]["AP"] < 90.0, worse[task]


def test_lvis_trains_with_repeat_factors_and_evaluates_through_the_transfer_trainer(tiny_lvis, tmp_path):
    # smaller FPN / head widths and one iteration keep this CPU run short; the LVIS settings stay
    cfg = transfer_cfg(LVIS_CONFIG, tmp_path / "run", "SOLVER.MAX_ITER", 1, "MODEL.FPN.OUT_CHANNELS", 64,
                       "MODEL.ROI_BOX_HEAD.CONV_DIM", 64, "MODEL.ROI_MASK_HEAD.CONV_DIM", 64)
    assert (cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.TEST.DETECTIONS_PER_IMAGE) == (1203, 8)  # TINY keeps 8 per image
    trainer = TransferTrainer(cfg)
    sampler = trainer.data_loader.dataset.dataset.sampler
    assert isinstance(sampler, RepeatFactorTrainingSampler)
    # every demo category is in >= 1/27 of the images, far above the threshold 0.001: all factors 1
    assert torch.equal(sampler._int_part + sampler._frac_part, torch.ones(27))
    train = DatasetCatalog.get("lvis_v1_train")
    rare = {1119 - 1}  # with a threshold above its image frequency, images with the rarest class repeat
    threshold = 0.5
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(copy.deepcopy(train), threshold)
    freq = sum(any(a["category_id"] in rare for a in r["annotations"]) for r in train) / len(train)
    for record, factor in zip(train, factors):
        if any(a["category_id"] in rare for a in record["annotations"]):
            assert factor.item() >= max(1.0, (threshold / freq) ** 0.5) - 1e-6
    trainer.resume_or_load(resume=False)
    trainer.train()
    record = json.load(open(tmp_path / "run" / "results.json"))
    for task in ("bbox", "segm"):
        metrics = record["results"]["lvis_v1_val"][task]
        assert {"AP", "AP50", "AP75", "APr", "APc", "APf"} <= set(metrics)
        assert all(v is None or -100.0 <= v <= 100.0 for v in metrics.values())
    assert (tmp_path / "run" / "inference" / "lvis_v1_val" / "lvis_instances_results.json").is_file()
    table = open(tmp_path / "run" / "results.md").read()
    assert "| random init | lvis_v1_val |" in table and "APbbr" in table and "APmkf" in table
    assert MetadataCatalog.get("lvis_v1_val").evaluator_type == "lvis"


def test_lvis_config_is_the_coco_protocol_with_lvis_settings():
    from soco_d2 import get_pretrain_cfg
    from config_utils import project_config_path

    cfg = get_pretrain_cfg()
    cfg.merge_from_file(project_config_path(LVIS_CONFIG))
    assert tuple(cfg.DATASETS.TRAIN) == ("lvis_v1_train",) and tuple(cfg.DATASETS.TEST) == ("lvis_v1_val",)
    assert (cfg.DATALOADER.SAMPLER_TRAIN, cfg.DATALOADER.REPEAT_THRESHOLD) == ("RepeatFactorTrainingSampler", 0.001)
    assert (cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.TEST.DETECTIONS_PER_IMAGE, cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST) == (1203, 300, 0.0001)
    assert {cfg.MODEL.RESNETS.NORM, cfg.MODEL.FPN.NORM, cfg.MODEL.ROI_BOX_HEAD.NORM, cfg.MODEL.ROI_MASK_HEAD.NORM} == {"SyncBN"}
    assert (cfg.MODEL.ROI_BOX_HEAD.NUM_CONV, cfg.MODEL.ROI_BOX_HEAD.NUM_FC, cfg.INPUT.FORMAT) == (4, 1, "RGB")
    assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.28, 103.53] and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS), cfg.SOLVER.WEIGHT_DECAY) == (90000, (60000, 80000), 2.5e-5)
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.DEVICE == "cuda" and cfg.TEST.PRECISE_BN.ENABLED
