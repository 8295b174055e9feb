"""Fine-tuning and evaluation with detectron2's own detectors and evaluators.

``TransferTrainer`` is soco_d2's ``Trainer`` (a ``DefaultTrainer``) with

* the evaluator of the dataset's ``evaluator_type`` (``engine.evaluators``);
* the BatchNorm variant chosen for the machine it runs on
  (:func:`prepare_transfer_cfg`): the fine-tune protocol's ``SyncBN`` stays
  SyncBN on several GPUs, becomes ``naiveSyncBN`` on several CPU processes
  (``nn.SyncBatchNorm`` needs CUDA) and plain ``BN`` in one process (same
  statistics), and a ``FrozenBN`` backbone without weights becomes ``BN``
  (random init with FrozenBN diverges);
* ``MODEL.WEIGHTS`` loaded safely, with a check that it really filled the
  backbone (``soco_d2.checkpoint.load_pretrained_weights``);
* ``results.json`` and a paper-style ``results.md`` in ``OUTPUT_DIR`` (``engine.results``).

``prepare_transfer(args)`` checks a run's inputs before anything is built;
``run_transfer(args, run)`` is the work of ``tools/transfer_net.py`` in one process.
"""
from __future__ import annotations

import logging
from collections import OrderedDict

from detectron2.data import MetadataCatalog
from detectron2.utils import comm

from ..checkpoint.loading import load_pretrained_weights
from ..data.subsets import register_subsets_in
from ..errors import InputError
from .checks import check_amp_dtype, check_dataset, check_weights
from .evaluators import EVALUATOR_TYPES, build_transfer_evaluator
from .norms import apply_norm_changes, log_norm_changes, syncbn_changes
from .results import write_results
from .resume import check_same_start
from .setup import RunSetup, cfg_from_args, check_device, is_cuda_run, setup_run
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

    ``cuda`` defaults to :func:`is_cuda_run`.  Returns a new (frozen if ``cfg``
    was) config when something changes, and logs each change unless ``log`` is False.
    """
    world_size = comm.get_world_size() if world_size is None else world_size
    cuda = is_cuda_run(cfg) if cuda is None else cuda
    return apply_norm_changes(cfg, norm_choices(cfg, world_size, cuda), log=log)


def check_transfer_inputs(cfg, eval_only: bool = False) -> None:
    """Every dataset the run reads is where detectron2 looks for it, and every test set has an evaluator."""
    for name in ([] if eval_only else list(cfg.DATASETS.TRAIN)) + list(cfg.DATASETS.TEST):
        check_dataset(name)
    check_amp_dtype(cfg)
    if cfg.SOLVER.get("ACCUMULATE_STEPS", 1) != 1:
        raise InputError(f"SOLVER.ACCUMULATE_STEPS {cfg.SOLVER.ACCUMULATE_STEPS}: gradient accumulation is a "
                         "pretraining option; fine-tuning runs one batch per step (set it to 1)")
    for name in cfg.DATASETS.TEST:
        kind = MetadataCatalog.get(name).get("evaluator_type", None)
        if kind not in EVALUATOR_TYPES:
            raise InputError(f"no evaluator for DATASETS.TEST {name!r} (evaluator_type {kind!r}); "
                             f"supported: {', '.join(EVALUATOR_TYPES)}")


def prepare_transfer(args, check: bool = True) -> RunSetup:
    """The config of a transfer run, every input checked (``check``: the launching process)."""
    cfg = cfg_from_args(args)
    # semi-supervised subsets (e.g. coco_2017_train_10pct_seed3) exist once named; every process registers them
    register_subsets_in(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    run = RunSetup(cfg, args)
    if check:
        check_device(cfg)
        run.check_output_dir()
        check_weights(cfg, args)
        check_transfer_inputs(cfg, eval_only=getattr(args, "eval_only", False))
    cfg.freeze()
    return run


def run_transfer(args, run: RunSetup | None = None):
    """Fine-tune (or with ``--eval-only`` just evaluate) in this process; returns the results."""
    run = run or prepare_transfer(args, check=False)
    cfg = run.cfg
    changes = norm_choices(cfg, comm.get_world_size(), is_cuda_run(cfg))
    cfg = prepare_transfer_cfg(cfg, log=False)
    setup_run(cfg, args)  # loggers, OUTPUT_DIR/config.yaml with the norms used
    log_norm_changes(changes)
    if args.eval_only:
        model = TransferTrainer.build_model(cfg)
        load_pretrained_weights(model, cfg.MODEL.WEIGHTS, cfg.OUTPUT_DIR, resume=args.resume,
                                unsafe_load=args.unsafe_load)
        return TransferTrainer.test(cfg, model)
    trainer = TransferTrainer(cfg, unsafe_load=args.unsafe_load)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


class TransferTrainer(Trainer):
    """Fine-tunes a detectron2 detector and evaluates it with the dataset's evaluator."""

    def __init__(self, cfg, *, unsafe_load: bool = False):
        super().__init__(prepare_transfer_cfg(cfg), unsafe_load=unsafe_load)

    @classmethod
    def build_model(cls, cfg):
        return super().build_model(prepare_transfer_cfg(cfg))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_transfer_evaluator(cfg, dataset_name, output_folder)

    def resume_or_load(self, resume=True):
        if resume and self.checkpointer.has_checkpoint():
            return super().resume_or_load(resume=True)  # model, optimizer, iteration
        load_pretrained_weights(self.model, self.cfg.MODEL.WEIGHTS, self.cfg.OUTPUT_DIR,
                                unsafe_load=self.checkpointer.unsafe_load)
        if resume:  # the processes that found a checkpoint check in Trainer.resume_or_load
            check_same_start(self)
        return None

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        if len(cfg.DATASETS.TEST) == 1 and results and cfg.DATASETS.TEST[0] not in results:
            results = OrderedDict([(cfg.DATASETS.TEST[0], results)])  # DefaultTrainer flattens one dataset
        if comm.is_main_process() and results:
            write_results(cfg.OUTPUT_DIR, results, weights=cfg.MODEL.WEIGHTS, cfg=cfg)
        return results
