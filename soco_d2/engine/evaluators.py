"""The evaluators of transfer runs: detectron2's own, chosen by the dataset's
``evaluator_type`` (COCO, LVIS, PASCAL VOC, Cityscapes instances)."""
from __future__ import annotations

import contextlib
import os
import tempfile

from detectron2.data import MetadataCatalog
from detectron2.utils import comm
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    COCOEvaluator,
    LVISEvaluator,
    PascalVOCDetectionEvaluator,
)

from .. import compat

# evaluator_type values build_transfer_evaluator handles (the start-up check reads it: add new types here too)
EVALUATOR_TYPES = ("coco", "lvis", "pascal_voc", "cityscapes_instance")


class CityscapesInstanceEvaluatorInDir(CityscapesInstanceEvaluator):
    """detectron2's Cityscapes instance evaluator, writing cityscapesScripts'
    ``matches.json`` into ``output_dir`` instead of the current directory, and
    working across machines: each rank writes its predictions locally and rank 0
    receives them all before evaluating (they pass through memory: PNG-compressed
    masks, a few KB per instance).

    (detectron2's tools/train_net.py asserts one GPU per rank before building
    it; the evaluator itself runs on CPU.)
    """

    def __init__(self, dataset_name: str, output_dir: str | None = None):
        super().__init__(dataset_name)
        self._output_dir = output_dir

    def reset(self):
        # every process writes into a folder of its own machine (detectron2 0.6 makes every
        # rank write into rank 0's /tmp folder, which other machines do not have);
        # evaluate() brings the files to rank 0 through the process group
        self._working_dir = tempfile.TemporaryDirectory(prefix="cityscapes_eval_")
        self._temp_dir = self._working_dir.name

    def _gather_predictions(self) -> None:
        """Copy every rank's prediction files (a text file per image, a PNG per instance)
        into rank 0's folder; a collective call, no shared filesystem needed."""
        if comm.get_world_size() == 1:
            return
        files = {}
        for name in os.listdir(self._temp_dir):
            with open(os.path.join(self._temp_dir, name), "rb") as f:
                files[name] = f.read()
        gathered = comm.gather(files, dst=0)
        if not comm.is_main_process():
            self._working_dir.cleanup()
            return
        for part in gathered[1:]:
            for name, data in part.items():
                with open(os.path.join(self._temp_dir, name), "wb") as f:
                    f.write(data)

    def evaluate(self):
        self._gather_predictions()
        compat.patch_cityscapes_evaluation()
        if not self._output_dir:
            return super().evaluate()
        # the parent reads gt_dir relative to the current directory: make it absolute first
        gt_dir = os.path.abspath(self._metadata.gt_dir)
        os.makedirs(self._output_dir, exist_ok=True)
        with _temporary_metadata_gt_dir(self, gt_dir), contextlib.chdir(self._output_dir):
            return super().evaluate()


@contextlib.contextmanager
def _temporary_metadata_gt_dir(evaluator, gt_dir):
    original = evaluator._metadata
    evaluator._metadata = _MetadataView(original, gt_dir=gt_dir)
    try:
        yield
    finally:
        evaluator._metadata = original


class _MetadataView:
    """Read-only view of a detectron2 ``Metadata`` with some fields replaced."""

    def __init__(self, metadata, **overrides):
        self._metadata, self._overrides = metadata, overrides

    def __getattr__(self, name):
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._metadata, name)


def build_transfer_evaluator(cfg, dataset_name: str, output_folder: str | None = None):
    """The evaluator that matches the dataset's ``evaluator_type``."""
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "coco":
        # the compiled fast COCOeval may be missing; pycocotools gives the same numbers
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=compat.has_compiled_ops())
    if evaluator_type == "lvis":  # needs the `lvis` package (README, Protocols)
        return LVISEvaluator(dataset_name, output_dir=output_folder)
    if evaluator_type == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    if evaluator_type == "cityscapes_instance":
        return CityscapesInstanceEvaluatorInDir(dataset_name, output_folder)
    raise NotImplementedError(
        f"no evaluator for dataset {dataset_name!r} (evaluator_type={evaluator_type!r}); "
        f"supported: {', '.join(EVALUATOR_TYPES)}"
    )
