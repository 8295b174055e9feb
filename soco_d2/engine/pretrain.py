"""The pretraining engine: config setup, the NaN/inf guard and ``PretrainTrainer``.

``PretrainTrainer`` is detectron2's trainer (through ``soco_d2.engine.Trainer``:
CPU-safe DDP, AMP / CPU bf16, optimizer state in checkpoints) with

* LARS or SGD and the warmup-cosine schedules of ``soco_d2.engine.solver``;
* the deterministic pretraining loader of ``soco_d2.data.build``, positioned at
  the resumed iteration (the loader is lazy: its workers start on the first
  batch, after ``resume_or_load`` has set ``start_iter``);
* hooks: per-iteration RNG seeding, IterationTimer, LRScheduler,
  ``MomentumHook``, PeriodicCheckpointer, PeriodicWriter (console,
  ``metrics.json``, TensorBoard); no evaluation;
* every loss term always logged (detectron2 logs them only when there are
  several), and a guard that stops all ranks together, before the optimizer
  step, when the loss is NaN/inf on any rank: no checkpoint of a bad state is
  ever written;
* checkpoints (model incl. momentum target and queues, optimizer, scheduler,
  iteration, seed) written atomically, so a killed run always resumes.

``setup_pretrain_cfg(args)`` is what ``tools/pretrain_net.py`` runs: config
merge, epochs -> iterations (a ``SOLVER.MAX_ITER`` on the command line wins),
freeze, ``default_setup``.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import weakref

import numpy as np
import torch
import torch.distributed as dist
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, hooks
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter, get_event_storage
from detectron2.utils.logger import setup_logger

from ..config import get_pretrain_cfg
from ..data.build import build_pretrain_train_loader, load_pretrain_dicts
from ..data.checks import check_pretrain_caches
from .hooks import IterationSeedHook, MomentumHook, unwrap_model
from .norms import apply_norm_changes, syncbn_changes
from .solver import build_pretrain_lr_scheduler, build_pretrain_optimizer
from .trainer import CPUAutocastTrainer, Trainer, model_device

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- config setup


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
        raise ValueError(f"{num_images} images make no full batch of SOLVER.IMS_PER_BATCH {solver.IMS_PER_BATCH}")
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


def cli_keys(opts) -> list[str]:
    """The KEY entries of detectron2's trailing ``KEY VALUE`` command-line pairs."""
    return list(opts[0::2]) if opts else []


def merged_cfg(args) -> CfgNode:
    """soco_d2's defaults + ``args.config_file`` + ``args.opts`` (unfrozen, nothing derived)."""
    cfg = get_pretrain_cfg()
    if getattr(args, "config_file", ""):
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(list(getattr(args, "opts", []) or []))
    return cfg


def setup_pretrain_cfg(args) -> CfgNode:
    """Config of a pretraining run: defaults + file + opts, epochs -> iterations,
    freeze, ``default_setup`` (logger, config.yaml, seeds)."""
    cfg = merged_cfg(args)
    notes = apply_epoch_schedule(cfg, cli_keys(getattr(args, "opts", [])))
    cfg.freeze()
    check_pretrain_caches(cfg)  # before anything is written to OUTPUT_DIR or a model is built
    default_setup(cfg, args)
    # detectron2 sets up its own loggers only; soco_d2's messages go to the console and log.txt too
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="soco_d2")
    for note in notes:
        logger.info(note)
    return cfg


def cpu_safe_norm_cfg(cfg: CfgNode) -> CfgNode:
    """``cfg`` with the BatchNorm variants this machine can run (SyncBN -> naiveSyncBN on
    several CPU processes, -> BN in one process; :mod:`soco_d2.engine.norms`), logged."""
    cuda = str(cfg.MODEL.DEVICE).startswith("cuda")
    return apply_norm_changes(cfg, syncbn_changes(cfg, comm.get_world_size(), cuda))


# --------------------------------------------------------------------------- NaN guard + metrics


class NonFiniteLossError(FloatingPointError):
    """The loss was NaN or inf on some rank; raised on every rank before the optimizer step."""


def _any_rank_true(flag: bool) -> bool:
    if comm.get_world_size() == 1:
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor)
    return bool(tensor.item() > 0)


def check_finite_losses(loss_dict: dict, iteration: int, last_checkpoint: str = "") -> None:
    """Raise ``NonFiniteLossError`` on every rank when any rank's total loss is not finite.

    A collective call: every rank must call it each iteration.
    """
    total = sum(v.detach().float().sum() for v in loss_dict.values())
    bad = _any_rank_true(not bool(torch.isfinite(total)))
    if not bad:
        return
    local = {k: float(v.detach().float().sum()) for k, v in loss_dict.items()}
    per_rank = comm.all_gather(local) if comm.get_world_size() > 1 else [local]
    terms = "; ".join(
        f"rank {rank}: " + ", ".join(f"{k}={v:.6g}" for k, v in losses.items()) for rank, losses in enumerate(per_rank)
    )
    raise NonFiniteLossError(
        f"Loss became NaN or infinite at iteration {iteration} ({terms}). Training stopped before the "
        f"optimizer step, so no checkpoint holds this state. Last good checkpoint: "
        f"{last_checkpoint or 'none (no checkpoint written yet)'}. A resumed run replays the same data, so "
        "change something first: lower SOLVER.BASE_LR, lengthen the warmup, enable SOLVER.CLIP_GRADIENTS, "
        "or disable SOLVER.AMP.ENABLED."
    )


def write_pretrain_metrics(loss_dict: dict, data_time: float, prefix: str = "") -> None:
    """detectron2's ``SimpleTrainer.write_metrics``, but every loss term is logged even
    when there is only one (detectron2 then logs only ``total_loss``)."""
    metrics = {k: v.detach().cpu().item() for k, v in loss_dict.items()}
    metrics["data_time"] = data_time
    gathered = comm.gather(metrics)
    if not comm.is_main_process():
        return
    storage = get_event_storage()
    storage.put_scalar("data_time", float(np.max([x.pop("data_time") for x in gathered])))
    metrics = {k: float(np.mean([x[k] for x in gathered])) for k in gathered[0]}
    total = sum(metrics.values())
    if not np.isfinite(total):
        raise FloatingPointError(f"Loss became infinite or NaN at iteration={storage.iter}!\nloss_dict = {metrics}")
    storage.put_scalar(f"{prefix}total_loss", total)
    storage.put_scalars(**{f"{prefix}{k}": v for k, v in metrics.items() if k != "total_loss"})


class PretrainStepMixin:
    """For detectron2's step trainers: the NaN/inf guard and full loss logging.

    ``_write_metrics`` runs after backward and before the optimizer step in
    ``SimpleTrainer``, ``AMPTrainer`` and ``CPUAutocastTrainer``, so raising
    there leaves the weights (and every checkpoint) untouched.
    """

    nan_guard: bool = True
    last_checkpoint_fn = None  # callable -> str, set by PretrainTrainer

    def _write_metrics(self, loss_dict, data_time: float, prefix: str = "") -> None:
        if self.nan_guard:
            hint = self.last_checkpoint_fn() if self.last_checkpoint_fn is not None else ""
            check_finite_losses(loss_dict, self.iter, hint)
        write_pretrain_metrics(loss_dict, data_time, prefix)


class PretrainSimpleTrainer(PretrainStepMixin, SimpleTrainer):
    pass


class PretrainAMPTrainer(PretrainStepMixin, AMPTrainer):
    pass


class PretrainCPUAutocastTrainer(PretrainStepMixin, CPUAutocastTrainer):
    pass


# --------------------------------------------------------------------------- checkpoints


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose files appear atomically (write to ``*.tmp``,
    then ``os.replace``): a run killed while saving leaves neither a truncated
    ``model_*.pth`` nor an empty ``last_checkpoint``, so ``--resume`` always finds
    the last complete checkpoint.  Non-local save dirs (``scheme://``) use the
    plain writes."""

    def save(self, name: str, **kwargs) -> None:
        if "://" in self.save_dir or not self.save_dir or not self.save_to_disk:
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        with open(path + ".tmp", "wb") as f:
            torch.save(data, f)
        os.replace(path + ".tmp", path)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if "://" in self.save_dir:
            return super().tag_last_checkpoint(last_filename_basename)
        path = os.path.join(self.save_dir, "last_checkpoint")
        with open(path + ".tmp", "w") as f:
            f.write(last_filename_basename)
        os.replace(path + ".tmp", path)


def last_good_checkpoint(checkpointer) -> str:
    """The file ``last_checkpoint`` names (only complete checkpoints are named there), or ""."""
    return checkpointer.get_checkpoint_file() if checkpointer.has_checkpoint() else ""


# --------------------------------------------------------------------------- trainer


class PretrainTrainer(Trainer):
    """Self-supervised pretraining of any soco_d2 meta-architecture (see the module docstring)."""

    def __init__(self, cfg):
        super().__init__(cfg)
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

    @classmethod
    def build_train_loader(cls, cfg):
        return build_pretrain_train_loader(cfg)

    @classmethod
    def ddp_kwargs(cls, cfg) -> dict:
        return {"broadcast_buffers": False, "find_unused_parameters": bool(cfg.SOLVER.DDP_FIND_UNUSED_PARAMETERS)}

    @classmethod
    def build_step_trainer(cls, cfg, model, data_loader, optimizer):
        if not cfg.SOLVER.AMP.ENABLED:
            return PretrainSimpleTrainer(model, data_loader, optimizer)
        if model_device(model).type == "cuda":
            return PretrainAMPTrainer(model, data_loader, optimizer)
        logger.info("SOLVER.AMP.ENABLED on CPU: using bf16 torch.autocast('cpu')")
        return PretrainCPUAutocastTrainer(model, data_loader, optimizer)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        logger.info("pretraining has no evaluation; transfer the checkpoint with tools/transfer_net.py")
        return {}

    def build_hooks(self):
        cfg = self.cfg
        # Trainer.__init__ makes a plain DetectionCheckpointer just before calling build_hooks;
        # pretraining checkpoints are written atomically (a SIGKILL must not break --resume)
        self.checkpointer = AtomicCheckpointer(self._trainer.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
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
            CommonMetricPrinter(self.max_iter),
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


# --------------------------------------------------------------------------- loss summary


def end_partial_line(path: str) -> None:
    """Terminate a last line cut short (a run killed while writing ``metrics.json``)."""
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def read_metrics(path: str) -> list[dict]:
    """``metrics.json`` rows with a ``total_loss``, one per iteration (the last row
    written for an iteration wins: a resumed run rewrites the iterations after its
    checkpoint); a row cut short by a killed run is skipped."""
    rows: dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("skipping a broken row of %s: %.80s", path, line)
                continue
            if "total_loss" in row and "iteration" in row:
                rows[int(row["iteration"])] = row
    return [rows[k] for k in sorted(rows)]


def loss_curve_summary(metrics_path: str, fraction: float = 0.1) -> dict:
    """First / last (means over the first and last ``fraction`` of the logged
    iterations, at least one row each) and min of ``total_loss``.

    Iterations whose negatives queue (MoCo-v2, DenseCL) still held random
    initial keys (a ``*queue_filled`` metric below 1) are left out: their loss
    is lower than any loss once the queue holds real keys (the early "rise"
    of queue methods), so it says nothing about learning."""
    rows = read_metrics(metrics_path)
    warmup = [r for r in rows if any(k.endswith("queue_filled") and v < 1 for k, v in r.items())]
    rows = [r for r in rows if r not in warmup]
    if not rows:
        raise ValueError(f"no total_loss in {metrics_path}")
    losses = [r["total_loss"] for r in rows]
    k = max(1, int(math.ceil(fraction * len(losses))))
    return {
        "iterations": [rows[0]["iteration"], rows[-1]["iteration"]],
        "num_rows": len(rows),
        "queue_warmup": len(warmup),
        "first": float(np.mean(losses[:k])),
        "last": float(np.mean(losses[-k:])),
        "min": float(np.min(losses)),
        "min_iteration": int(rows[int(np.argmin(losses))]["iteration"]),
        "window": k,
    }


def format_loss_summary(summary: dict) -> str:
    first, last = summary["first"], summary["last"]
    trend = "decreased" if last < first else "did not decrease"
    skipped = summary.get("queue_warmup", 0)
    note = f"; {skipped} iteration(s) left out: the queue still held its random initial keys" if skipped else ""
    return (
        f"loss curve (total_loss, {summary['num_rows']} logged iterations "
        f"{summary['iterations'][0]}..{summary['iterations'][1]}, first/last = mean of {summary['window']}): "
        f"first {first:.4f}, last {last:.4f}, min {summary['min']:.4f} at iteration {summary['min_iteration']}; "
        f"last - first = {last - first:+.4f} ({trend}){note}"
    )
