"""Transfer: TransferTrainer, its evaluators and results on tiny datasets in the
real VOC and Cityscapes folder layouts (docs/detectron2.md, Datasets), the BatchNorm
policy, the C4 head with the extra norm, results tables and tools/transfer_net.py.

The fake datasets are written under $DETECTRON2_DATASETS (a session temp
folder set by conftest before detectron2 registered its builtin datasets).
"""
import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.layers import BatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image

from soco_d2 import get_pretrain_cfg
from config_utils import project_config_path
from soco_d2.checkpoint import load_pretrained_weights
from soco_d2.engine import TransferTrainer, build_transfer_evaluator
from soco_d2.engine.evaluators import CityscapesInstanceEvaluatorInDir
from soco_d2.engine.results import compare_results, results_markdown, write_results
from soco_d2.engine.transfer import norm_choices, prepare_transfer_cfg

VOC_CONFIG = "transfer/voc_faster_rcnn_R_50_C4_24k.yaml"
CITYSCAPES_CONFIG = "transfer/cityscapes_mask_rcnn_R_50_FPN.yaml"
# CPU-sized overrides: a ResNet-18 trunk, tiny images, few proposals / RoIs / detections,
# 2 iterations, 1 precise-BN batch (the full R-50 configs are built by tests/test_configs.py)
TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 128, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 32,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 128, "MODEL.RPN.POST_NMS_TOPK_TEST", 16,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16, "TEST.DETECTIONS_PER_IMAGE", 8,
    "INPUT.MIN_SIZE_TRAIN", (128,), "INPUT.MAX_SIZE_TRAIN", 256,
    "INPUT.MIN_SIZE_TEST", 128, "INPUT.MAX_SIZE_TEST", 256,
    "DATALOADER.NUM_WORKERS", 0, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.BASE_LR", 0.001,
    "SOLVER.MAX_ITER", 2, "SOLVER.WARMUP_ITERS", 1, "SOLVER.STEPS", (), "SOLVER.CHECKPOINT_PERIOD", 1000,
    "TEST.PRECISE_BN.NUM_ITER", 1, "TEST.EVAL_PERIOD", 0, "SEED", 3,
]


def datasets_root():
    return os.environ["DETECTRON2_DATASETS"]


def transfer_cfg(name, output_dir, *extra):
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(project_config_path(name))
    cfg.merge_from_list(TINY + ["OUTPUT_DIR", str(output_dir)] + list(extra))
    return cfg


# ------------------------------------------------------------------ fake PASCAL VOC
VOC_IMAGES = {  # year -> split -> {image id: [(class, (xmin, ymin, xmax, ymax) 1-based inclusive)]}
    "2007": {
        "trainval": {"000005": [("dog", (20, 30, 90, 100))], "000007": [("car", (40, 20, 150, 90)), ("person", (5, 5, 30, 110))]},
        "test": {"000001": [("dog", (10, 15, 70, 80)), ("car", (90, 40, 150, 100))], "000004": [("person", (60, 10, 100, 110))]},
    },
    "2012": {"trainval": {"2008_000002": [("cat", (30, 30, 120, 100))], "2008_000003": [("dog", (50, 20, 140, 110))]}},
}


def _voc_xml(image_id, objects, width, height):
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for name, (x0, y0, x1, y1) in objects:
        obj = ET.SubElement(root, "object")
        for tag, value in (("name", name), ("pose", "Unspecified"), ("truncated", 0), ("difficult", 0)):
            ET.SubElement(obj, tag).text = str(value)
        box = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, tag).text = str(value)
    return ET.tostring(root)


@pytest.fixture(scope="session")
def fake_voc():
    rng = np.random.default_rng(0)
    width, height = 160, 120
    for year, splits in VOC_IMAGES.items():
        root = os.path.join(datasets_root(), f"VOC{year}")
        for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        for split, images in splits.items():
            with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
                f.write("\n".join(images) + "\n")  # >= 2 ids: np.loadtxt of one id breaks the loader
            for image_id, objects in images.items():
                pixels = rng.integers(0, 80, size=(height, width, 3), dtype=np.uint8)
                for i, (_, (x0, y0, x1, y1)) in enumerate(objects):
                    pixels[y0 - 1 : y1, x0 - 1 : x1] = (200, 60 + 60 * i, 40)
                Image.fromarray(pixels).save(os.path.join(root, "JPEGImages", f"{image_id}.jpg"))
                with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "wb") as f:
                    f.write(_voc_xml(image_id, objects, width, height))
    return datasets_root()


def test_voc_perfect_predictions_score_the_expected_ap(fake_voc, tmp_path):
    cfg = transfer_cfg(VOC_CONFIG, tmp_path)
    evaluator = build_transfer_evaluator(cfg, "voc_2007_test")
    assert isinstance(evaluator, PascalVOCDetectionEvaluator)
    records = DatasetCatalog.get("voc_2007_test")
    assert len(records) == 2
    evaluator.reset()
    for record in records:
        inst = Instances((record["height"], record["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]])
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": inst}])
    results = evaluator.evaluate()
    # the VOC evaluator averages over all 20 classes; those without ground truth count as 0
    present = {a["category_id"] for r in records for a in r["annotations"]}
    expected = 100.0 * len(present) / len(MetadataCatalog.get("voc_2007_test").thing_classes)
    for metric in ("AP", "AP50", "AP75"):
        assert results["bbox"][metric] == pytest.approx(expected)


def test_voc_c4_trains_and_evaluates_through_the_transfer_trainer(fake_voc, tmp_path):
    cfg = transfer_cfg(VOC_CONFIG, tmp_path)
    trainer = TransferTrainer(cfg)
    assert trainer.cfg.MODEL.RESNETS.NORM == "BN"  # SyncBN in one process
    res5 = trainer.model.roi_heads.res5
    assert isinstance(res5.norm, BatchNorm2d) and res5.norm.num_features == 512  # the extra norm (R-18 res5)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = trainer.storage.histories()["total_loss"].values()
    assert len(losses) == 2 and all(math.isfinite(v) for v, _ in losses)
    record = json.load(open(tmp_path / "results.json"))
    assert record["label"] == "random init" and record["iteration"] == 2  # iterations done
    bbox = record["results"]["voc_2007_test"]["bbox"]
    assert set(bbox) == {"AP", "AP50", "AP75"}
    assert all(v is None or 0.0 <= v <= 100.0 for v in bbox.values())
    table = open(tmp_path / "results.md").read()
    assert "| random init | voc_2007_test |" in table and "APbb50" in table


# ------------------------------------------------------------------ fake Cityscapes
CITYSCAPES = {  # split -> city -> list of images, each a list of (label name, instance box x0, y0, x1, y1)
    "train": {"aachen": [[("car", 20, 60, 90, 110), ("person", 150, 30, 175, 110)],
                         [("car", 100, 50, 200, 100)]]},
    "val": {"frankfurt": [[("car", 30, 50, 110, 100), ("person", 180, 20, 210, 100)],
                          [("car", 120, 40, 220, 110), ("car", 10, 70, 80, 120)]]},
}


@pytest.fixture(scope="session")
def fake_cityscapes():
    from cityscapesscripts.helpers.labels import name2label

    width, height = 256, 128
    rng = np.random.default_rng(1)
    road = name2label["road"].id
    for split, cities in CITYSCAPES.items():
        for city, images in cities.items():
            image_dir = os.path.join(datasets_root(), "cityscapes", "leftImg8bit", split, city)
            gt_dir = os.path.join(datasets_root(), "cityscapes", "gtFine", split, city)
            os.makedirs(image_dir, exist_ok=True)
            os.makedirs(gt_dir, exist_ok=True)
            for k, objects in enumerate(images):
                stem = f"{city}_{k:06d}_000019"
                pixels = rng.integers(0, 90, size=(height, width, 3), dtype=np.uint8)
                label_ids = np.full((height, width), road, dtype=np.uint8)
                instance_ids = np.full((height, width), road, dtype=np.uint16)  # stuff: the plain label id
                polygons = [{"label": "road", "polygon": [[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]]}]
                counts = {}
                for name, x0, y0, x1, y1 in objects:
                    label = name2label[name].id
                    counts[label] = counts.get(label, -1) + 1
                    label_ids[y0:y1, x0:x1] = label
                    instance_ids[y0:y1, x0:x1] = label * 1000 + counts[label]
                    pixels[y0:y1, x0:x1] = (220, 40 + 100 * (name == "car"), 60)
                    polygons.append({"label": name, "polygon": [[x0, y0], [x1 - 1, y0], [x1 - 1, y1 - 1], [x0, y1 - 1]]})
                Image.fromarray(pixels).save(os.path.join(image_dir, f"{stem}_leftImg8bit.png"))
                Image.fromarray(label_ids).save(os.path.join(gt_dir, f"{stem}_gtFine_labelIds.png"))
                Image.fromarray(instance_ids).save(os.path.join(gt_dir, f"{stem}_gtFine_instanceIds.png"))
                with open(os.path.join(gt_dir, f"{stem}_gtFine_polygons.json"), "w") as f:
                    json.dump({"imgHeight": height, "imgWidth": width, "objects": polygons}, f)
    return datasets_root()


def test_cityscapes_instanceids_are_16_bit(fake_cityscapes):
    path = os.path.join(fake_cityscapes, "cityscapes/gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_instanceIds.png")
    ids = np.array(Image.open(path))
    assert ids.dtype == np.uint16 and ids.max() >= 26000


def perfect_instances(record) -> Instances:
    """The ground-truth instances of a Cityscapes record as predictions (score 1)."""
    from cityscapesscripts.helpers.labels import id2label

    thing_classes = MetadataCatalog.get("cityscapes_fine_instance_seg_val").thing_classes
    gt = record["file_name"].replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png", "_gtFine_instanceIds.png")
    ids = np.array(Image.open(gt))
    instances = [i for i in np.unique(ids) if i >= 1000]
    inst = Instances(ids.shape)
    inst.pred_classes = torch.tensor([thing_classes.index(id2label[i // 1000].name) for i in instances])
    inst.scores = torch.ones(len(instances))
    inst.pred_masks = torch.from_numpy(np.stack([ids == i for i in instances]))
    return inst


def evaluate_one_image_per_rank(records: list, output_dir: str, tmp_root: str) -> dict:
    """Rank r predicts image r into a temporary folder under tmp_root/rank{r} (as on its
    own machine); rank 0 evaluates both."""
    import tempfile

    from detectron2.utils import comm

    tempfile.tempdir = os.path.join(tmp_root, f"rank{comm.get_rank()}")
    os.makedirs(tempfile.tempdir, exist_ok=True)
    evaluator = CityscapesInstanceEvaluatorInDir("cityscapes_fine_instance_seg_val", output_dir)
    evaluator.reset()
    record = records[comm.get_rank()]
    evaluator.process([{"file_name": record["file_name"]}], [{"instances": perfect_instances(record)}])
    own_dir = evaluator._temp_dir
    return {"results": evaluator.evaluate(), "own_dir": own_dir, "left": os.listdir(tempfile.tempdir)}


def test_cityscapes_evaluation_gathers_every_machines_predictions(fake_cityscapes, tmp_path):
    from dist_utils import run_in_gloo_processes

    # the records are loaded here: detectron2's Cityscapes loader starts a multiprocessing pool
    records = DatasetCatalog.get("cityscapes_fine_instance_seg_val")
    ranks = run_in_gloo_processes(evaluate_one_image_per_rank, 2, records, str(tmp_path / "eval"),
                                  str(tmp_path / "tmp"), timeout_s=120)
    assert ranks[1]["own_dir"].startswith(str(tmp_path / "tmp" / "rank1"))  # not rank 0's folder
    assert ranks[1]["results"] is None and ranks[1]["left"] == []  # rank 1 cleaned up its folder
    # both images' perfect predictions reached rank 0 (a missing prediction file is an error)
    assert ranks[0]["results"]["segm"]["AP"] == pytest.approx(100.0)
    assert ranks[0]["left"] == []


def test_cityscapes_perfect_predictions_score_ap_100(fake_cityscapes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # cityscapesScripts would write matches.json here; ours goes to output_dir
    cfg = transfer_cfg(CITYSCAPES_CONFIG, tmp_path)
    out = tmp_path / "eval"
    evaluator = build_transfer_evaluator(cfg, "cityscapes_fine_instance_seg_val", str(out))
    assert isinstance(evaluator, CityscapesInstanceEvaluatorInDir)
    records = DatasetCatalog.get("cityscapes_fine_instance_seg_val")
    assert len(records) == 2 and all(r["annotations"] for r in records)
    evaluator.reset()
    for record in records:
        evaluator.process([{"file_name": record["file_name"]}], [{"instances": perfect_instances(record)}])
    results = evaluator.evaluate()
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP50"] == pytest.approx(100.0)
    assert (out / "matches.json").is_file() and not (tmp_path / "matches.json").exists()


def test_cityscapes_mask_rcnn_trains_and_evaluates_through_the_transfer_trainer(fake_cityscapes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = transfer_cfg(CITYSCAPES_CONFIG, tmp_path / "run")
    trainer = TransferTrainer(cfg)
    assert {trainer.cfg.MODEL.RESNETS.NORM, trainer.cfg.MODEL.FPN.NORM, trainer.cfg.MODEL.ROI_BOX_HEAD.NORM,
            trainer.cfg.MODEL.ROI_MASK_HEAD.NORM} == {"BN"}
    trainer.resume_or_load(resume=False)
    trainer.train()
    record = json.load(open(tmp_path / "run" / "results.json"))
    segm = record["results"]["cityscapes_fine_instance_seg_val"]["segm"]
    assert set(segm) == {"AP", "AP50"} and all(v is None or 0.0 <= v <= 100.0 for v in segm.values())
    assert "APmk50" in open(tmp_path / "run" / "results.md").read()


# ------------------------------------------------------------------ BatchNorm policy
def _norms(cfg):
    return (cfg.MODEL.RESNETS.NORM, cfg.MODEL.FPN.NORM, cfg.MODEL.ROI_BOX_HEAD.NORM, cfg.MODEL.ROI_MASK_HEAD.NORM)


@pytest.mark.parametrize(
    "world_size, cuda, expected",
    [(1, False, "BN"), (1, True, "BN"), (2, False, "naiveSyncBN"), (8, True, "SyncBN")],
)
def test_syncbn_becomes_what_the_machine_can_run(world_size, cuda, expected):
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(project_config_path("transfer/coco_mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.freeze()
    out = prepare_transfer_cfg(cfg, world_size=world_size, cuda=cuda)
    assert _norms(out) == (expected,) * 4 and out.is_frozen()
    assert _norms(cfg) == ("SyncBN",) * 4  # the input is not modified


def test_frozen_bn_without_weights_becomes_bn():
    cfg = get_pretrain_cfg()  # detectron2's defaults: FrozenBN
    backbone = [c[:3] for c in norm_choices(cfg, 1, False) if c[0] == "MODEL.RESNETS.NORM"]
    assert backbone == [("MODEL.RESNETS.NORM", "FrozenBN", "BN")]
    cfg.MODEL.WEIGHTS = "pretrained.pkl"
    assert [c for c in norm_choices(cfg, 1, False) if c[0] == "MODEL.RESNETS.NORM"] == []


# ------------------------------------------------------------------ weights check
def test_unconverted_weights_fail_loudly(tmp_path):
    import torchvision

    raw = str(tmp_path / "resnet50.pth")
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), raw)
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(project_config_path("transfer/coco_mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", raw])
    model = build_model(prepare_transfer_cfg(cfg, world_size=1, cuda=False))
    with pytest.raises(RuntimeError, match="convert it with tools/convert_to_d2.py"):
        load_pretrained_weights(model, raw)


# ------------------------------------------------------------------ results tables
def test_results_table_and_comparison(tmp_path):
    a = {"demo_instances_val": {"bbox": {"AP": 12.34, "AP50": 30.0, "AP75": 10.0, "APs": float("nan"), "APm": 5.0, "APl": 20.0},
                                "segm": {"AP": 11.0, "AP50": 28.0, "AP75": 9.0, "APs": 1.0, "APm": 4.0, "APl": 19.0}}}
    b = {"demo_instances_val": {"bbox": {"AP": 2.0, "AP50": 6.0, "AP75": 1.0, "APs": 0.0, "APm": 1.0, "APl": 3.0},
                                "segm": {"AP": 1.5, "AP50": 5.0, "AP75": 0.5, "APs": 0.0, "APm": 1.0, "APl": 2.0}}}
    write_results(str(tmp_path / "soco"), a, weights="out/model_final_d2.pkl")
    write_results(str(tmp_path / "random"), b)
    record = json.load(open(tmp_path / "soco" / "results.json"))
    assert record["results"]["demo_instances_val"]["bbox"]["APs"] is None  # NaN is not JSON
    table = compare_results([str(tmp_path / "soco" / "results.json"), str(tmp_path / "random")], ["SoCo", "random init"])
    lines = table.splitlines()
    assert lines[0].split("|")[3:6] == [" APbb ", " APbb50 ", " APbb75 "]
    assert "APmkL" in lines[0]
    assert lines[2].startswith("| SoCo | demo_instances_val | 12.3 | 30.0 | 10.0 | – |")
    assert lines[3].startswith("| random init | demo_instances_val | 2.0 |")
    assert lines[4].startswith("| Δ (SoCo − random init) |  | +10.3 | +24.0 |")
    voc = results_markdown([("x", {"voc_2007_test": {"bbox": {"AP": 50.0, "AP50": 80.0, "AP75": 55.0}}})])
    assert voc.splitlines()[0] == "| Weights | Dataset | APbb | APbb50 | APbb75 |"


def test_transfer_net_compare_flag(tmp_path, repo_root):
    write_results(str(tmp_path / "a"), {"d": {"bbox": {"AP": 3.0}}}, weights="a.pkl")
    write_results(str(tmp_path / "b"), {"d": {"bbox": {"AP": 1.0}}})
    proc = subprocess.run(
        [sys.executable, os.path.join(repo_root, "tools", "transfer_net.py"), "--compare",
         str(tmp_path / "a" / "results.json"), str(tmp_path / "b" / "results.json")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| a.pkl | d | 3.0 |" in proc.stdout and "| random init | d | 1.0 |" in proc.stdout
    assert "+2.0" in proc.stdout


@pytest.mark.slow
def test_transfer_net_two_cpu_processes_use_naive_syncbn(tmp_path, repo_root):
    """tools/transfer_net.py --num-gpus 2 on CPU: gloo workers, naiveSyncBN, evaluation, results.json."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, os.path.join(repo_root, "tools", "transfer_net.py"), "--num-gpus", "2",
         "--config-file", project_config_path("transfer/demo_mask_rcnn_R_50_FPN.yaml"),
         "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "1", "DATALOADER.NUM_WORKERS", "0",
         "TEST.PRECISE_BN.NUM_ITER", "1"],
        capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = open(out / "log.txt").read()
    assert "MODEL.RESNETS.NORM SyncBN -> naiveSyncBN" in log
    assert (out / "results.json").is_file()


def _yaml_chain(path):
    import yaml

    data = yaml.safe_load(open(path))
    base = data.get("_BASE_")
    chain = _yaml_chain(os.path.join(os.path.dirname(path), base)) if base else []
    return chain + [data]


@pytest.mark.parametrize("name", ["coco_mask_rcnn_R_50_FPN_1x", "coco_mask_rcnn_R_50_FPN_2x", "voc_faster_rcnn_R_50_C4_24k",
                                  "cityscapes_mask_rcnn_R_50_FPN", "demo_mask_rcnn_R_50_FPN"])
def test_transfer_configs_state_device_and_no_weights_url(name):
    path = project_config_path(f"transfer/{name}.yaml")
    chain = _yaml_chain(path)
    assert any("DEVICE" in part.get("MODEL", {}) for part in chain)
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(path)
    assert cfg.MODEL.WEIGHTS == ""
    # the input convention every converted (torchvision-style) checkpoint needs
    assert cfg.INPUT.FORMAT == "RGB" and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.28, 103.53] and list(cfg.MODEL.PIXEL_STD) == [58.395, 57.12, 57.375]
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.TEST.PRECISE_BN.ENABLED


def test_schedules_follow_the_protocols():
    def load(name):
        cfg = get_pretrain_cfg()
        cfg.merge_from_file(project_config_path(f"transfer/{name}.yaml"))
        return cfg

    one, two, voc = load("coco_mask_rcnn_R_50_FPN_1x"), load("coco_mask_rcnn_R_50_FPN_2x"), load("voc_faster_rcnn_R_50_C4_24k")
    assert (one.SOLVER.MAX_ITER, tuple(one.SOLVER.STEPS)) == (90000, (60000, 80000))
    assert (two.SOLVER.MAX_ITER, tuple(two.SOLVER.STEPS)) == (180000, (120000, 160000))
    assert one.SOLVER.WEIGHT_DECAY == 2.5e-5 and one.MODEL.ROI_BOX_HEAD.NUM_CONV == 4 and one.MODEL.ROI_BOX_HEAD.NUM_FC == 1
    assert {one.MODEL.RESNETS.NORM, one.MODEL.FPN.NORM, one.MODEL.ROI_BOX_HEAD.NORM, one.MODEL.ROI_MASK_HEAD.NORM} == {"SyncBN"}
    assert (voc.SOLVER.MAX_ITER, tuple(voc.SOLVER.STEPS), voc.SOLVER.WARMUP_ITERS) == (24000, (18000, 22000), 100)
    assert tuple(voc.INPUT.MIN_SIZE_TRAIN) == tuple(range(480, 801, 32))
    assert voc.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm" and voc.MODEL.ROI_HEADS.NUM_CLASSES == 20
    assert tuple(voc.DATASETS.TRAIN) == ("voc_2007_trainval", "voc_2012_trainval") and tuple(voc.DATASETS.TEST) == ("voc_2007_test",)
