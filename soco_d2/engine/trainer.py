"""The trainer every soco_d2 run uses: detectron2's ``DefaultTrainer`` made to
run the same way on CPUs and GPUs, and to resume exactly.

Differences from detectron2 0.6's ``DefaultTrainer``:
* DDP is created without ``device_ids`` when the model is on CPU (0.6 always
  passes them, which DDP rejects for CPU modules);
* the step is :class:`soco_d2.engine.steps.StepTrainer`: ``SOLVER.AMP`` in
  bfloat16 or float16 (with a GradScaler) on CUDA, bf16 ``torch.autocast("cpu")``
  on a CPU (detectron2 0.6's ``AMPTrainer`` is float16 only and asserts CUDA);
* checkpoints hold the optimizer (and grad-scaler) state, which 0.6 drops;
* a resumed run checks that every process resumed from the same checkpoint
  (:func:`soco_d2.engine.resume.check_same_start`);
* weights are read safely and checkpoints written atomically
  (:class:`soco_d2.checkpoint.SafeCheckpointer`; ``unsafe_load`` is ``--unsafe-load``);
* the console line says its losses are medians (:class:`MedianMetricPrinter`).

Extension points besides detectron2's ``build_*`` classmethods:
``build_ddp_model`` (the one place the model is wrapped in DDP), ``ddp_kwargs``
and ``build_step_trainer``.
"""
from __future__ import annotations

import inspect
import logging
import os
import weakref

import torch
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine.defaults import create_ddp_model
from detectron2.utils import comm
from detectron2.utils.events import JSONWriter, TensorboardXWriter
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..modeling.gather import broadcast_queues
from ..checkpoint.checkpointer import SafeCheckpointer
from .metrics import MedianMetricPrinter
from .resume import check_same_start
from .steps import StepTrainer, build_step_trainer


def model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def no_forward_buffer_sync() -> dict:
    """DDP kwargs that stop DDP from broadcasting rank 0's buffers at every forward
    (BN statistics stay per rank, as in detectron2; every rank enqueues the same
    all-gathered keys).  torch >= 2.13 deprecates ``broadcast_buffers`` for
    ``forward_sync_buffers``, which still syncs buffers once at construction;
    older torch gets ``broadcast_buffers=False`` and :func:`broadcast_queues`
    does that one sync for the queues."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def wrap_ddp(model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """detectron2's ``create_ddp_model`` with ``device_ids`` only for CUDA modules."""
    if model_device(model).type == "cuda":
        kwargs.setdefault("device_ids", [comm.get_local_rank()])
    else:
        kwargs["device_ids"] = None
    model = create_ddp_model(model, **kwargs)
    broadcast_queues(model)  # redundant on torch >= 2.13 (DDP syncs buffers once), needed on older torch
    return model


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with CPU-safe DDP, CPU bf16 autocast and full resume state.

    Subclasses override the usual ``build_*`` classmethods; ``ddp_kwargs`` and
    ``build_step_trainer`` are the two extra extension points.
    """

    def __init__(self, cfg, *, unsafe_load: bool = False):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = self.build_ddp_model(cfg, model)
        self._trainer = self.build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SafeCheckpointer(model, cfg.OUTPUT_DIR, unsafe_load=unsafe_load, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def ddp_kwargs(cls, cfg) -> dict:
        return no_forward_buffer_sync()

    @classmethod
    def build_ddp_model(cls, cfg, model: torch.nn.Module) -> torch.nn.Module:
        """The model wrapped in DDP when there are several processes (else unchanged)."""
        return wrap_ddp(model, **cls.ddp_kwargs(cfg))

    @classmethod
    def build_step_trainer(cls, cfg, model, data_loader, optimizer) -> SimpleTrainer:
        """The step: ``StepTrainer`` in the precision of ``SOLVER.AMP`` (no accumulation here)."""
        return build_step_trainer(cfg, model, data_loader, optimizer, StepTrainer)

    def resume_or_load(self, resume=True):
        """detectron2's, then (``resume``) a check that every process starts at the same
        iteration from the same checkpoint."""
        result = super().resume_or_load(resume=resume)
        if resume:
            check_same_start(self)
        return result

    def build_writers(self):
        """Console (medians, labelled), ``metrics.json`` and TensorBoard."""
        os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
        return [
            MedianMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
            TensorboardXWriter(self.cfg.OUTPUT_DIR),
        ]

    def state_dict(self):
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logging.getLogger(__name__).warning("checkpoint has no optimizer state; optimizer starts fresh")
