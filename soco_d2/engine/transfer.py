"""Fine-tuning and evaluation with detectron2's own detectors and evaluators."""
from __future__ import annotations

import json
import logging
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    COCOEvaluator,
    DatasetEvaluators,
    PascalVOCDetectionEvaluator,
)
from detectron2.utils import comm

from .. import compat
from .trainer import Trainer

logger = logging.getLogger(__name__)


def build_transfer_evaluator(cfg, dataset_name: str, output_folder: str | None = None):
    """The evaluator that matches the dataset's ``evaluator_type``."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "coco":
        # the compiled fast COCOeval may be missing; pycocotools gives the same numbers
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=compat.has_compiled_ops())
    if evaluator_type == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    if evaluator_type == "cityscapes_instance":
        compat.patch_cityscapes_evaluation()
        # detectron2's tools/train_net.py asserts a GPU per rank here; the evaluator itself does not need one
        return CityscapesInstanceEvaluator(dataset_name)
    raise NotImplementedError(
        f"no evaluator for dataset {dataset_name!r} (evaluator_type={evaluator_type!r}); "
        "supported: coco, pascal_voc, cityscapes_instance"
    )


class TransferTrainer(Trainer):
    """Fine-tunes a detectron2 detector and evaluates it with the dataset's evaluator."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_transfer_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            write_results(cfg.OUTPUT_DIR, results)
        return results


def write_results(output_dir: str, results: dict) -> str:
    """Save ``results.json`` (dataset -> task -> metric -> value)."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "results.json")
    with open(path, "w") as f:
        json.dump(_to_builtin(results), f, indent=2, sort_keys=True)
    logger.info("wrote %s", path)
    return path


def _to_builtin(obj):
    if isinstance(obj, dict):
        return {str(k): _to_builtin(v) for k, v in obj.items()}
    if hasattr(obj, "item"):
        return obj.item()
    return obj
