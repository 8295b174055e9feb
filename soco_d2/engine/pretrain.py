"""Pretraining: the run's setup (``prepare_pretrain``) and ``PretrainTrainer``.

``PretrainTrainer`` is detectron2's trainer (through ``soco_d2.engine.Trainer``:
CPU-safe DDP, AMP / CPU bf16, optimizer state in checkpoints, safe loading and
atomic checkpoints) with

* LARS or SGD and the warmup-cosine schedules of ``soco_d2.engine.solver``;
* the deterministic pretraining loader of ``soco_d2.data.build`` over the
  dataset dicts the setup listed, positioned at the resumed iteration (the
  loader is lazy: its workers start on the first batch, after
  ``resume_or_load`` has set ``start_iter``), in ``SOLVER.ACCUMULATE_STEPS``
  slices per step (``soco_d2.engine.steps``);
* hooks: per-iteration RNG seeding, IterationTimer, LRScheduler,
  ``MomentumHook``, with ``TEST.PROBE.ENABLED`` the ``ProbeHook`` (kNN / linear
  probes of the online backbone, :mod:`soco_d2.engine.probe_hook`),
  PeriodicWriter (console, ``metrics.json``, TensorBoard), PeriodicCheckpointer;
* every loss term always logged and the NaN/inf guard of ``engine.metrics``,
  which stops all ranks together before the optimizer step.

``prepare_pretrain(args)`` is what ``tools/pretrain_net.py`` checks before
anything starts: config, device, OUTPUT_DIR, the dataset (listed once), the
caches and MODEL.WEIGHTS; then epochs -> iterations (a ``SOLVER.MAX_ITER`` on
the command line wins).
"""
from __future__ import annotations

import functools
import logging
import os

from detectron2.config import CfgNode
from detectron2.engine import hooks
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.events import JSONWriter, TensorboardXWriter

from ..checkpoint.checkpointer import last_good_checkpoint
from ..data.build import build_pretrain_train_loader, load_pretrain_dicts
from ..errors import InputError
from .checks import check_pretrain_inputs, check_weights, list_pretrain_dataset
from .hooks import IterationSeedHook, MomentumHook, unwrap_model
from .metrics import MedianMetricPrinter, end_partial_line, format_loss_summary, loss_curve_summary
from .norms import apply_norm_changes, syncbn_changes
from .probe_hook import ProbeHook
from .setup import RunSetup, cfg_from_args, check_device, cli_keys, is_cuda_run
from .solver import build_pretrain_lr_scheduler, build_pretrain_optimizer
from .steps import PretrainStepTrainer, build_step_trainer
from .trainer import Trainer, no_forward_buffer_sync

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- setup


def apply_epoch_schedule(cfg: CfgNode, cli_keys=(), num_images: int | None = None) -> list[str]:
    """Turn ``SOLVER.EPOCHS`` / ``WARMUP_EPOCHS`` into iterations (``cfg`` must be unfrozen).

    ``iters_per_epoch = len(dataset) // IMS_PER_BATCH`` (drop-last epochs, as the
    loader makes them); ``MAX_ITER = EPOCHS * iters_per_epoch`` and
    ``WARMUP_ITERS = round(WARMUP_EPOCHS * iters_per_epoch)`` unless that key is in
    ``cli_keys`` (the KEY entries of the command line's opts): a ``SOLVER.MAX_ITER``
    given on the command line wins, as detectron2 users expect.  Also sets
    ``SOLVER.ITERS_PER_EPOCH``.  Returns log lines saying what was chosen.
    """
    solver = cfg.SOLVER
    cli_keys = set(cli_keys)
    if solver.EPOCHS <= 0 and solver.WARMUP_EPOCHS <= 0 and not solver.COSINE_PER_EPOCH:
        return [f"schedule: SOLVER.MAX_ITER {solver.MAX_ITER}, WARMUP_ITERS {solver.WARMUP_ITERS} (iterations)"]
    if num_images is None:
        num_images = len(load_pretrain_dicts(cfg.DATASETS.TRAIN))
    iters_per_epoch = num_images // solver.IMS_PER_BATCH
    if iters_per_epoch <= 0:
        raise InputError(f"{num_images} images make no full batch of SOLVER.IMS_PER_BATCH {solver.IMS_PER_BATCH}")
    solver.ITERS_PER_EPOCH = iters_per_epoch
    notes = [f"schedule: {num_images} images / {solver.IMS_PER_BATCH} per batch = {iters_per_epoch} iterations per epoch"]
    if solver.EPOCHS > 0:
        from_epochs = int(solver.EPOCHS * iters_per_epoch)
        if "SOLVER.MAX_ITER" in cli_keys:
            notes.append(f"schedule: SOLVER.MAX_ITER {solver.MAX_ITER} from the command line wins over "
                         f"SOLVER.EPOCHS {solver.EPOCHS} (= {from_epochs} iterations)")
        else:
            solver.MAX_ITER = from_epochs
            notes.append(f"schedule: SOLVER.EPOCHS {solver.EPOCHS} -> SOLVER.MAX_ITER {from_epochs}")
    if solver.EPOCHS > 0 or solver.WARMUP_EPOCHS > 0:
        warmup = int(round(solver.WARMUP_EPOCHS * iters_per_epoch))
        if "SOLVER.WARMUP_ITERS" in cli_keys:
            notes.append(f"schedule: SOLVER.WARMUP_ITERS {solver.WARMUP_ITERS} from the command line wins over "
                         f"SOLVER.WARMUP_EPOCHS {solver.WARMUP_EPOCHS} (= {warmup} iterations)")
        else:
            solver.WARMUP_ITERS = warmup
            notes.append(f"schedule: SOLVER.WARMUP_EPOCHS {solver.WARMUP_EPOCHS} -> SOLVER.WARMUP_ITERS {warmup}")
    if solver.WARMUP_ITERS >= solver.MAX_ITER and solver.WARMUP_ITERS > 0:
        notes.append(f"schedule: WARNING warmup ({solver.WARMUP_ITERS} iterations) covers the whole run "
                     f"(MAX_ITER {solver.MAX_ITER}): the lr never reaches its cosine phase")
    return notes


def prepare_pretrain(args, check: bool = True) -> RunSetup:
    """Config + dataset dicts of a pretraining run, every input checked (``check``; the
    launching process) before any model is built; epochs turned into iterations, frozen."""
    cfg = cfg_from_args(args)
    run = RunSetup(cfg, args)
    if check:
        check_device(cfg)
        run.check_output_dir()
        check_weights(cfg, args)
    run.dataset_dicts = list_pretrain_dataset(cfg)
    if check:
        check_pretrain_inputs(cfg, run.dataset_dicts)
    run.notes = tuple(apply_epoch_schedule(cfg, cli_keys(getattr(args, "opts", [])), len(run.dataset_dicts)))
    cfg.freeze()
    return run


def cpu_safe_norm_cfg(cfg: CfgNode) -> CfgNode:
    """``cfg`` with the BatchNorm variants this machine can run (SyncBN -> naiveSyncBN on
    several CPU processes, -> BN in one process; :mod:`soco_d2.engine.norms`), logged."""
    return apply_norm_changes(cfg, syncbn_changes(cfg, comm.get_world_size(), is_cuda_run(cfg)))


# --------------------------------------------------------------------------- trainer


class PretrainTrainer(Trainer):
    """Self-supervised pretraining of any soco_d2 meta-architecture (see the module docstring)."""

    def __init__(self, cfg, *, dataset_dicts=None, unsafe_load: bool = False, progress: bool = True):
        self.dataset_dicts = dataset_dicts  # listed by the setup; None: listed here
        self.progress = progress  # progress bars (the probes'); False with --no-progress
        super().__init__(cfg, unsafe_load=unsafe_load)
        self._trainer.nan_guard = bool(cfg.SOLVER.NAN_GUARD)
        self._trainer.last_checkpoint_fn = functools.partial(last_good_checkpoint, self.checkpointer)
        if len(cfg.DATASETS.TEST):
            logger.warning("DATASETS.TEST %s is ignored: pretraining runs no evaluation", tuple(cfg.DATASETS.TEST))

    # ---- builders
    @classmethod
    def build_model(cls, cfg):
        model = build_model(cpu_safe_norm_cfg(cfg))
        logger.info("Model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_pretrain_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_pretrain_lr_scheduler(cfg, optimizer)

    def build_train_loader(self, cfg):
        """The pretraining loader over the dataset dicts the setup listed (an instance method: it needs them)."""
        return build_pretrain_train_loader(cfg, dataset_dicts=self.dataset_dicts)

    @classmethod
    def ddp_kwargs(cls, cfg) -> dict:
        return {**no_forward_buffer_sync(), "find_unused_parameters": bool(cfg.SOLVER.DDP_FIND_UNUSED_PARAMETERS)}

    @classmethod
    def build_step_trainer(cls, cfg, model, data_loader, optimizer):
        return build_step_trainer(cfg, model, data_loader, optimizer, PretrainStepTrainer,
                                  accumulate_steps=cfg.SOLVER.ACCUMULATE_STEPS)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        logger.info("pretraining has no evaluation; transfer the checkpoint with tools/transfer_net.py")
        return {}

    def build_hooks(self):
        cfg = self.cfg
        ret = [
            IterationSeedHook(),  # reads self.seed at every step
            hooks.IterationTimer(),
            hooks.LRScheduler(),
        ]
        model = unwrap_model(self._trainer.model)
        if callable(getattr(model, "momentum_update", None)):
            ret.append(MomentumHook(model, cfg.MODEL.SSL.MOMENTUM, cfg.MODEL.SSL.MOMENTUM_SCHEDULE))
        else:
            logger.warning("%s has no momentum_update(tau): no momentum hook", type(model).__name__)
        if cfg.TEST.PROBE.ENABLED:  # every rank; before the writer, which logs its values with the iteration's
            metrics = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
            ret.append(ProbeHook(cfg, self._trainer.model, metrics, progress=self.progress))
        if comm.is_main_process():
            # the writer runs before the checkpointer (detectron2 has them the other way round):
            # a run killed right after checkpoint k has already written iteration k's metrics,
            # so the resumed run (from k + 1) leaves no hole in metrics.json
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=cfg.SOLVER.LOG_PERIOD))
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
        return ret

    def build_writers(self):
        window = self.cfg.SOLVER.LOG_WINDOW
        os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
        metrics = os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")
        end_partial_line(metrics)  # a killed run may have left half a row; resumed rows start on a new line
        return [
            MedianMetricPrinter(self.max_iter),
            JSONWriter(metrics, window_size=window),
            TensorboardXWriter(self.cfg.OUTPUT_DIR, window_size=window),
        ]

    # ---- state
    @property
    def train_loader(self):
        return self._trainer.data_loader

    @property
    def seed(self) -> int:
        """The data / RNG seed (``cfg.SEED``, or drawn once when < 0); saved in checkpoints."""
        return self.train_loader.seed

    def state_dict(self):
        state = super().state_dict()
        state["seed"] = self.seed
        state["bad_images"] = self.train_loader.bad_images.state_dict()  # a resumed run continues the count
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "bad_images" in state_dict:
            self.train_loader.bad_images.load_state_dict(state_dict["bad_images"])
        if "seed" in state_dict and int(state_dict["seed"]) != self.seed:
            logger.info("resuming with the checkpoint's seed %d (config: %d)", state_dict["seed"], self.seed)
            self.train_loader.seed = int(state_dict["seed"])

    def train(self):
        # the loader starts mapping on its first batch, so positioning it here is free
        self.train_loader.start_iter = self.start_iter
        return super().train()


def print_loss_summary(cfg) -> None:
    """Rank 0: the loss-curve summary of the run that just ended (its ``metrics.json`` rows)."""
    metrics = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
    if comm.is_main_process() and os.path.isfile(metrics):
        print(format_loss_summary(loss_curve_summary(metrics, max_iter=cfg.SOLVER.MAX_ITER)), flush=True)
