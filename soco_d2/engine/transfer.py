"""Fine-tuning and evaluation with detectron2's own detectors and evaluators.

``TransferTrainer`` is soco_d2's ``Trainer`` (a ``DefaultTrainer``) with

* the evaluator of the dataset's ``evaluator_type`` (COCO, PASCAL VOC,
  Cityscapes instances);
* the BatchNorm variant chosen for the machine it runs on
  (:func:`prepare_transfer_cfg`): the fine-tune protocol's ``SyncBN`` stays
  SyncBN on several GPUs, becomes ``naiveSyncBN`` on several CPU processes
  (``nn.SyncBatchNorm`` needs CUDA) and plain ``BN`` in one process (same
  statistics), and a ``FrozenBN`` backbone without weights becomes ``BN``
  (random init with FrozenBN diverges);
* a check that ``MODEL.WEIGHTS`` really filled the backbone;
* ``results.json`` and a paper-style ``results.md`` in ``OUTPUT_DIR``.

``main(args)`` is ``tools/transfer_net.py``; ``compare_results`` prints
several runs' AP rows side by side.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections import OrderedDict

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    COCOEvaluator,
    PascalVOCDetectionEvaluator,
)
from detectron2.utils import comm

from .. import compat
from ..checkpoint import group_sizes, missing_by_group
from .norms import apply_norm_changes, log_norm_changes, syncbn_changes
from .trainer import Trainer

logger = logging.getLogger(__name__)

def norm_choices(cfg, world_size: int, cuda: bool) -> list[tuple[str, str, str, str]]:
    """``(key, configured, used, why)`` for every norm key that must change on this machine:
    the shared SyncBN rule (:mod:`soco_d2.engine.norms`) plus, for fine-tuning, a
    ``FrozenBN`` backbone without weights becomes ``BN``."""
    changes = syncbn_changes(cfg, world_size, cuda)
    if cfg.MODEL.RESNETS.NORM == "FrozenBN" and not cfg.MODEL.WEIGHTS:
        changes.append(("MODEL.RESNETS.NORM", "FrozenBN", "BN", "no MODEL.WEIGHTS: FrozenBN keeps random init's 0/1 stats and diverges"))
    return changes


def prepare_transfer_cfg(cfg, world_size: int | None = None, cuda: bool | None = None, log: bool = True):
    """``cfg`` with the BatchNorm variants this machine can run; unchanged when none must change.

    ``cuda`` defaults to whether the model goes to a CUDA device.  Returns a
    new (frozen if ``cfg`` was) config when something changes, and logs each
    change unless ``log`` is False.
    """
    world_size = comm.get_world_size() if world_size is None else world_size
    if cuda is None:
        cuda = str(cfg.MODEL.DEVICE).startswith("cuda") and torch.cuda.is_available()
    return apply_norm_changes(cfg, norm_choices(cfg, world_size, cuda), log=log)


def check_device(cfg) -> None:
    if str(cfg.MODEL.DEVICE).startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no CUDA device is available; add `MODEL.DEVICE cpu` "
            "(or use a configs/transfer/demo_*.yaml config on CPU)"
        )


# ---------------------------------------------------------------- evaluators
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
    if evaluator_type == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    if evaluator_type == "cityscapes_instance":
        return CityscapesInstanceEvaluatorInDir(dataset_name, output_folder)
    raise NotImplementedError(
        f"no evaluator for dataset {dataset_name!r} (evaluator_type={evaluator_type!r}); "
        "supported: coco, pascal_voc, cityscapes_instance"
    )


# ---------------------------------------------------------------- weights
class _RecordingCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that keeps the IncompatibleKeys of its last load."""

    last_incompatible = None

    def _load_model(self, checkpoint):
        self.last_incompatible = super()._load_model(checkpoint)
        return self.last_incompatible


def load_pretrained_weights(model, weights: str, output_dir: str = "", resume: bool = False, **checkpointables):
    """Load like ``DefaultTrainer.resume_or_load``: OUTPUT_DIR's last checkpoint with
    ``resume`` (when there is one), else ``weights`` into the model only.

    For pretrained ``weights``, log how many backbone / FPN / box-head tensors
    were filled and fail when none of the backbone was (e.g. a raw .pth that
    was not converted).  Returns the checkpointer.
    """
    checkpointer = _RecordingCheckpointer(model, output_dir, **checkpointables)
    if resume and checkpointer.has_checkpoint():
        checkpointer.resume_or_load(weights, resume=True)
        return checkpointer
    checkpointer.load(weights, checkpointables=[])
    incompatible = checkpointer.last_incompatible
    if incompatible is None:  # no weights: random init
        return checkpointer
    missing = missing_by_group(incompatible, model)
    sizes = group_sizes(model)
    backbone_missing = missing["backbone"]
    if sizes["backbone"] and len(backbone_missing) == sizes["backbone"]:
        raise RuntimeError(
            f"MODEL.WEIGHTS {weights} filled none of the {sizes['backbone']} backbone tensors; "
            "convert it with tools/convert_to_d2.py first (detectron2 matches names only for "
            "model-zoo .pkl files)"
        )
    summary = ", ".join(f"{g} {sizes[g] - len(missing[g])}/{sizes[g]}" for g in sizes if sizes[g])
    log = logger.warning if backbone_missing else logger.info
    log("MODEL.WEIGHTS %s filled: %s%s", weights, summary,
        f" (backbone missing, e.g. {backbone_missing[0]})" if backbone_missing else "")
    return checkpointer


# ---------------------------------------------------------------- trainer
class TransferTrainer(Trainer):
    """Fine-tunes a detectron2 detector and evaluates it with the dataset's evaluator."""

    def __init__(self, cfg):
        super().__init__(prepare_transfer_cfg(cfg))

    @classmethod
    def build_model(cls, cfg):
        return super().build_model(prepare_transfer_cfg(cfg))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_transfer_evaluator(cfg, dataset_name, output_folder)

    def resume_or_load(self, resume=True):
        if resume and self.checkpointer.has_checkpoint():
            return super().resume_or_load(resume=True)  # model, optimizer, iteration
        load_pretrained_weights(self.model, self.cfg.MODEL.WEIGHTS, self.cfg.OUTPUT_DIR)
        return None

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        if len(cfg.DATASETS.TEST) == 1 and results and cfg.DATASETS.TEST[0] not in results:
            results = OrderedDict([(cfg.DATASETS.TEST[0], results)])  # DefaultTrainer flattens one dataset
        if comm.is_main_process() and results:
            write_results(cfg.OUTPUT_DIR, results, weights=cfg.MODEL.WEIGHTS)
        return results


# ---------------------------------------------------------------- results
TASK_ABBREVIATIONS = OrderedDict([("bbox", "bb"), ("segm", "mk")])
METRIC_ORDER = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_METRIC_SUFFIX = {"AP": "", "AP50": "50", "AP75": "75", "APs": "S", "APm": "M", "APl": "L"}


def weights_label(weights: str) -> str:
    return weights if weights else "random init"


def _current_iteration():
    try:
        from detectron2.utils.events import get_event_storage

        return int(get_event_storage().iter)
    except (AssertionError, ImportError):
        return None


def write_results(output_dir: str, results: dict, weights: str = "") -> str:
    """Save ``results.json`` ({weights, iteration, results: dataset -> task -> metric}) and ``results.md``."""
    os.makedirs(output_dir, exist_ok=True)
    record = {
        "weights": weights,
        "label": weights_label(weights),
        "iteration": _current_iteration(),
        "results": _to_builtin(results),
    }
    path = os.path.join(output_dir, "results.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(results_markdown([(record["label"], record["results"])]) + "\n")
    logger.info("wrote %s and results.md", path)
    return path


def load_results(path: str) -> dict:
    """A ``results.json`` (or the folder holding one)."""
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    with open(path) as f:
        record = json.load(f)
    if "results" not in record:  # a plain dataset -> task -> metric dict
        record = {"weights": "", "label": os.path.basename(os.path.dirname(os.path.abspath(path))), "results": record}
    return record


def _columns(runs) -> list[tuple[str, str]]:
    present = set()
    for _, results in runs:
        for tasks in results.values():
            for task, metrics in tasks.items():
                present.update((task, m) for m in metrics)
    tasks = list(TASK_ABBREVIATIONS) + sorted({t for t, _ in present} - set(TASK_ABBREVIATIONS))
    return [(t, m) for t in tasks for m in METRIC_ORDER if (t, m) in present]


def _header(task: str, metric: str) -> str:
    return f"AP{TASK_ABBREVIATIONS.get(task, task)}{_METRIC_SUFFIX[metric]}"


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"  # not measured, or NaN (no predictions / no ground truth)
    return f"{value:.1f}"


def results_markdown(runs, delta: bool = False) -> str:
    """Markdown table, one row per (run, dataset): AP, AP50, AP75, APs/m/l per task.

    ``runs`` is a list of ``(label, {dataset: {task: {metric: value}}})``.
    With ``delta`` and two runs, a last row gives first minus second.
    """
    columns = _columns(runs)
    datasets = list(OrderedDict.fromkeys(d for _, results in runs for d in results))
    header = ["Weights", "Dataset"] + [_header(t, m) for t, m in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = []
    for label, results in runs:
        for dataset in datasets:
            if dataset not in results:
                continue
            values = [results[dataset].get(t, {}).get(m) for t, m in columns]
            rows.append(values)
            lines.append("| " + " | ".join([label, dataset] + [_fmt(v) for v in values]) + " |")
    if delta and len(runs) == 2 and len(rows) == 2:
        diff = [None if a is None or b is None else a - b for a, b in zip(*rows)]
        lines.append("| " + " | ".join([f"Δ ({runs[0][0]} − {runs[1][0]})", ""] + [
            "–" if v is None else f"{v:+.1f}" for v in diff]) + " |")
    return "\n".join(lines)


def compare_results(paths, labels=None) -> str:
    """Side-by-side markdown table of several ``results.json`` files (first minus second as Δ)."""
    records = [load_results(p) for p in paths]
    labels = list(labels or [])
    if labels and len(labels) != len(records):
        raise ValueError(f"{len(labels)} labels for {len(records)} results files")
    runs = [(labels[i] if labels else r["label"], r["results"]) for i, r in enumerate(records)]
    return results_markdown(runs, delta=True)


def _to_builtin(obj):
    """numpy scalars -> Python numbers; NaN (e.g. AP without predictions) -> None (valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): _to_builtin(v) for k, v in obj.items()}
    if hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


# ---------------------------------------------------------------- tools/transfer_net.py
def add_transfer_arguments(parser):
    parser.add_argument(
        "--compare", nargs="+", metavar="RESULTS",
        help="print the AP rows of these results.json files (or run folders) side by side and exit",
    )
    parser.add_argument("--labels", nargs="+", help="row labels for --compare (default: the weights of each run)")
    return parser


def setup(args):
    from detectron2.engine import default_setup
    from detectron2.utils.logger import setup_logger

    from ..config import get_pretrain_cfg

    cfg = get_pretrain_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    check_device(cfg)
    cuda = str(cfg.MODEL.DEVICE).startswith("cuda") and torch.cuda.is_available()
    changes = norm_choices(cfg, comm.get_world_size(), cuda)
    cfg = prepare_transfer_cfg(cfg, cuda=cuda, log=False)
    cfg.freeze()
    default_setup(cfg, args)  # sets up detectron2's logger, writes OUTPUT_DIR/config.yaml (the norms used)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="soco_d2", abbrev_name="soco_d2")
    log_norm_changes(changes)
    return cfg


def main(args):
    """Fine-tune (or with ``--eval-only`` just evaluate) one config; runs in every process."""
    cfg = setup(args)
    if args.eval_only:
        model = TransferTrainer.build_model(cfg)
        load_pretrained_weights(model, cfg.MODEL.WEIGHTS, cfg.OUTPUT_DIR, resume=args.resume)
        return TransferTrainer.test(cfg, model)
    trainer = TransferTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def uses_cuda(args) -> bool:
    """Whether this run's config puts the model on CUDA (decides the launcher before any process starts)."""
    from ..config import get_pretrain_cfg

    cfg = get_pretrain_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    return str(cfg.MODEL.DEVICE).startswith("cuda") and torch.cuda.is_available()


def run(args):
    """Entry point of tools/transfer_net.py (after argument parsing)."""
    from .launch import launch

    if args.compare:
        print(compare_results(args.compare, args.labels))
        return None
    if not args.config_file:
        raise SystemExit("--config-file is required (or --compare RESULTS...)")
    return launch(
        main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
        dist_url=args.dist_url, args=(args,), use_cuda=uses_cuda(args),
    )


__all__ = [
    "TransferTrainer",
    "build_transfer_evaluator",
    "compare_results",
    "load_pretrained_weights",
    "prepare_transfer_cfg",
    "results_markdown",
    "write_results",
]
