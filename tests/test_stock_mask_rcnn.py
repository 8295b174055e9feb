"""detectron2's stock Mask R-CNN R50-FPN trains and evaluates on the demo set,
on CPU, through soco_d2's compat layer and trainer."""
import math

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from pycocotools import mask as mask_util

from config_utils import model_zoo_config_path
from soco_d2.engine import TransferTrainer, build_transfer_evaluator


def stock_mask_rcnn_cfg(output_dir, norm="BN"):
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo_config_path("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
            "MODEL.RESNETS.NORM", norm, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 200,
            "INPUT.MIN_SIZE_TRAIN", (160,), "INPUT.MAX_SIZE_TRAIN", 224,
            "INPUT.MIN_SIZE_TEST", 160, "INPUT.MAX_SIZE_TEST", 224,
            "DATASETS.TRAIN", ("demo_instances_train",), "DATASETS.TEST", (),
            "DATALOADER.NUM_WORKERS", 0, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.BASE_LR", 0.002,
            "SOLVER.MAX_ITER", 3, "SOLVER.WARMUP_ITERS", 1, "SOLVER.STEPS", (),
            "SOLVER.CHECKPOINT_PERIOD", 1000, "OUTPUT_DIR", str(output_dir), "SEED", 1,
        ]
    )
    return cfg


@pytest.mark.parametrize("norm", ["BN", "GN"])
def test_stock_mask_rcnn_trains_with_finite_losses(tmp_path, norm):
    cfg = stock_mask_rcnn_cfg(tmp_path, norm)
    trainer = TransferTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    history = trainer.storage.histories()
    for key in ("loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"):
        values = [v for v, _ in history[key].values()]
        assert len(values) == 3 and all(math.isfinite(v) for v in values), (key, values)


def _perfect_outputs(record):
    """The ground truth of one image turned into model outputs."""
    h, w = record["height"], record["width"]
    anns = record["annotations"]
    inst = Instances((h, w))
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.scores = torch.ones(len(anns))
    inst.pred_classes = torch.tensor([a["category_id"] for a in anns])
    masks = [mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w))) for a in anns]
    inst.pred_masks = torch.from_numpy(np.stack(masks).astype(bool))
    return {"instances": inst}


def test_perfect_predictions_score_ap_100(tmp_path):
    cfg = stock_mask_rcnn_cfg(tmp_path)
    evaluator = build_transfer_evaluator(cfg, "demo_instances_val", str(tmp_path))
    assert isinstance(evaluator, COCOEvaluator)
    evaluator.reset()
    for record in DatasetCatalog.get("demo_instances_val"):
        evaluator.process([{"image_id": record["image_id"]}], [_perfect_outputs(record)])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)
