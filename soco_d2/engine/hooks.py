"""Pretraining hooks: the momentum (EMA) schedule and per-iteration RNG seeding.

Both are pure functions of the iteration, so a run resumed from a checkpoint
at iteration k behaves from k+1 on exactly like the uninterrupted run (the
official SoCo code restarts its tau schedule at every resume).
"""
from __future__ import annotations

import logging

import torch
from detectron2.engine import HookBase
from detectron2.utils import comm
from torch.nn.parallel import DataParallel, DistributedDataParallel

from ..data.build import derive_seed, seed_global_rngs
from ..modeling.momentum import momentum_at

logger = logging.getLogger(__name__)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / DataParallel."""
    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model


class MomentumHook(HookBase):
    """After every optimizer step: ``model.momentum_update(tau_k)`` and log ``momentum_tau``.

    ``tau_k = 1 - (1 - base) * (cos(pi * k / K) + 1) / 2`` with ``k`` the
    iteration that just ran and ``K = max_iter`` ("cosine"; BYOL / SoCo /
    DetCon), or ``base`` ("constant"; MoCo-v2 / DenseCL).  BYOL and DetCon
    update the target after the optimizer step of iteration k with tau_k;
    SoCo's code updates before the forward of k+1 with tau_{k+1}, the same
    update one iteration later in the schedule.
    """

    def __init__(self, model: torch.nn.Module, base: float, schedule: str = "cosine", max_iter: int | None = None):
        self._model = unwrap_model(model)
        self._base = float(base)
        self._schedule = schedule
        self._max_iter = max_iter
        momentum_at(0, 1, self._base, schedule)  # fail now on an unknown schedule name

    def tau(self, iteration: int) -> float:
        max_iter = self._max_iter if self._max_iter is not None else self.trainer.max_iter
        return momentum_at(iteration, max_iter, self._base, self._schedule)

    def after_step(self):
        tau = self.tau(self.trainer.iter)
        self._model.momentum_update(tau)
        self.trainer.storage.put_scalar("momentum_tau", tau, smoothing_hint=False)


class IterationSeedHook(HookBase):
    """Before every step, seed the global RNGs (Python, numpy, torch CPU and CUDA)
    from (seed, iteration, rank), so randomness inside the model (DenseCL's
    shuffle-BN permutation, dropout) is the same after a resume.  The data
    loader seeds its samples itself (``soco_d2.data.build``).

    ``seed`` defaults to the trainer's ``seed`` attribute, read at every step
    (a resumed trainer takes it from its checkpoint).
    """

    def __init__(self, seed: int | None = None):
        self._seed = seed

    def before_step(self):
        base = self._seed if self._seed is not None else self.trainer.seed
        seed = derive_seed(base, self.trainer.iter, comm.get_rank(), 0x5EED)
        seed_global_rngs(seed)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.manual_seed_all(seed)
