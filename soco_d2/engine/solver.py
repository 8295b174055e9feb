"""Optimisers and learning-rate schedules of the pretraining recipes.

* ``LARS``: SGD with momentum wrapped in layer-wise trust ratios (You et al.
  2017), the optimiser of SoCo, BYOL and DetCon.  Parameter groups carry a
  ``lars`` flag; with ``SOLVER.LARS_EXCLUDE_1D`` every 1-D parameter (biases,
  norm weights of the backbone, FPN, heads and MLPs) goes to a group with
  neither weight decay nor trust ratio, as in the official code.
* ``SOLVER.OPTIMIZER "SGD"`` is detectron2's own ``build_optimizer`` (DenseCL,
  MoCo-v2: weight decay on every parameter).
* ``LR_SCHEDULER_NAME "WarmupCosineToEnd"``: linear warmup from
  ``WARMUP_FACTOR * lr`` over ``WARMUP_ITERS``, then cosine over the remaining
  iterations to the absolute ``COSINE_END_LR``, optionally stepped once per
  epoch (``COSINE_PER_EPOCH``, DenseCL / MoCo-v2).  Built from fvcore's param
  schedulers and detectron2's ``LRMultiplier``; any other name is detectron2's
  ``build_lr_scheduler``.

Both builders use the scaled learning rate
``BASE_LR * IMS_PER_BATCH / REFERENCE_BATCH_SIZE`` (when the latter is > 0).
"""
from __future__ import annotations

import logging
import math

import torch
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.solver.lr_scheduler import LRMultiplier
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
)

logger = logging.getLogger(__name__)

WARMUP_COSINE_TO_END = "WarmupCosineToEnd"


class LARS(torch.optim.Optimizer):
    """SGD (momentum, no Nesterov) on gradients rescaled by a trust ratio.

    For every parameter ``w`` of a group with ``lars=True``::

        g <- g + weight_decay * w
        g <- g * eta * ||w|| / (||g|| + eps)      (ratio 1 if either norm is 0)
        mu <- momentum * mu + g ;  w <- w - lr * mu

    Groups with ``lars=False`` take the plain SGD step (``g + weight_decay * w``,
    no trust ratio); the pretraining builder gives them ``weight_decay = 0``.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, eps: float = 0.0, lars: bool = True):
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0 or eps < 0:
            raise ValueError(f"invalid LARS hyper-parameters: lr={lr} momentum={momentum} "
                             f"weight_decay={weight_decay} eta={eta} eps={eps}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps, lars=lars)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._group_step(group, params)
        return loss

    def _group_step(self, group: dict, params: list[torch.Tensor]) -> None:
        """One step of a group with ``torch._foreach_*`` kernels: a few launches per
        group instead of several per parameter (209 tensors for SoCo_FPN R50)."""
        grads = [p.grad for p in params]  # never modified: new tensors once anything changes them
        if group["weight_decay"] != 0:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        if group["lars"]:
            ratios = list(trust_ratios(params, grads, group["eta"], group["eps"]).unbind())
            if group["weight_decay"] != 0:
                torch._foreach_mul_(grads, ratios)
            else:
                grads = torch._foreach_mul(grads, ratios)
        states = [self.state[p] for p in params]
        running = [i for i, state in enumerate(states) if "momentum_buffer" in state]
        if running:  # mu <- momentum * mu + g
            bufs = [states[i]["momentum_buffer"] for i in running]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, [grads[i] for i in running])
        for state, grad in zip(states, grads):
            if "momentum_buffer" not in state:  # first step: mu = g
                state["momentum_buffer"] = grad.detach().clone()
        torch._foreach_add_(params, [state["momentum_buffer"] for state in states], alpha=-group["lr"])


def trust_ratios(params: list[torch.Tensor], grads: list[torch.Tensor], eta: float, eps: float) -> torch.Tensor:
    """(P,) ``eta * ||w|| / (||g|| + eps)`` per parameter, 1 where either norm is 0 (no host sync)."""
    w_norms = torch.stack(torch._foreach_norm(params))
    g_norms = torch.stack(torch._foreach_norm(grads))
    ratio = eta * w_norms / (g_norms + eps)
    return torch.where((w_norms > 0) & (g_norms > 0), ratio, torch.ones_like(ratio))


def scaled_base_lr(cfg) -> float:
    """``BASE_LR * IMS_PER_BATCH / REFERENCE_BATCH_SIZE`` (SoCo: 1.0 x B/256), or BASE_LR."""
    if cfg.SOLVER.REFERENCE_BATCH_SIZE > 0:
        return cfg.SOLVER.BASE_LR * cfg.SOLVER.IMS_PER_BATCH / cfg.SOLVER.REFERENCE_BATCH_SIZE
    return cfg.SOLVER.BASE_LR


def trainable_named_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters that receive gradients, once each (the momentum target's are frozen and left out)."""
    seen: set[int] = set()
    named = []
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        named.append((name, param))
    return named


def lars_param_groups(model: torch.nn.Module, weight_decay: float, exclude_1d: bool = True) -> list[dict]:
    """Two groups: multi-dimensional weights (weight decay + trust ratio) and, with
    ``exclude_1d``, every 1-D parameter (biases, norm weights) without either."""
    scaled, excluded = [], []
    for _, param in trainable_named_parameters(model):
        (excluded if exclude_1d and param.ndim <= 1 else scaled).append(param)
    groups = [{"params": scaled, "weight_decay": weight_decay, "lars": True}]
    if excluded:
        groups.append({"params": excluded, "weight_decay": 0.0, "lars": False})
    return [g for g in groups if g["params"]]


def build_pretrain_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER``: "LARS" (groups above) or "SGD" (detectron2's build_optimizer).

    Both honour ``SOLVER.CLIP_GRADIENTS`` (off by default) and the scaled lr.
    """
    lr = scaled_base_lr(cfg)
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SOLVER.BASE_LR = lr
        optimizer = build_optimizer(cfg, model)
    elif name == "LARS":
        groups = lars_param_groups(model, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.LARS_EXCLUDE_1D)
        optimizer = maybe_add_gradient_clipping(cfg, LARS)(
            groups, lr=lr, momentum=cfg.SOLVER.MOMENTUM, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            eta=cfg.SOLVER.LARS_ETA, eps=cfg.SOLVER.LARS_EPS,
        )
        sizes = ", ".join(
            f"{'LARS' if g['lars'] else 'plain SGD'} wd={g['weight_decay']:g}: {len(g['params'])} tensors"
            for g in optimizer.param_groups
        )
        logger.info("LARS (eta %g, eps %g, momentum %g) parameter groups: %s",
                    cfg.SOLVER.LARS_ETA, cfg.SOLVER.LARS_EPS, cfg.SOLVER.MOMENTUM, sizes)
    else:
        raise ValueError(f"unknown SOLVER.OPTIMIZER {cfg.SOLVER.OPTIMIZER!r}; expected 'SGD' or 'LARS'")
    logger.info("optimizer %s, lr %g (BASE_LR %g, IMS_PER_BATCH %d, REFERENCE_BATCH_SIZE %d)",
                name, lr, cfg.SOLVER.BASE_LR, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.REFERENCE_BATCH_SIZE)
    return optimizer


class EpochSteppedParamScheduler(ParamScheduler):
    """Holds another scheduler's value constant within each epoch.

    ``where`` in [0, 1) covers ``num_updates`` iterations; the value of epoch
    ``e`` is ``scheduler(e * updates_per_epoch / num_updates)``, so a cosine
    over ``E`` epochs gives ``cos(pi * e / E)`` (MoCo-v2 / DenseCL's ``adjust_learning_rate``).
    """

    def __init__(self, scheduler: ParamScheduler, num_updates: int, updates_per_epoch: int):
        if num_updates <= 0 or updates_per_epoch <= 0:
            raise ValueError(f"need positive num_updates ({num_updates}) and updates_per_epoch ({updates_per_epoch})")
        self._scheduler = scheduler
        self._num_updates = num_updates
        self._updates_per_epoch = updates_per_epoch

    def __call__(self, where: float) -> float:
        epoch = math.floor(where * self._num_updates / self._updates_per_epoch + 1e-6)
        return self._scheduler(epoch * self._updates_per_epoch / self._num_updates)


def warmup_cosine_to_end_multiplier(
    max_iter: int,
    warmup_iters: int,
    warmup_factor: float,
    end_multiplier: float,
    iters_per_epoch: int = 0,
) -> ParamScheduler:
    """The lr multiplier as a function of ``where = iteration / max_iter``.

    Linear ``warmup_factor -> 1`` over ``warmup_iters``, then cosine ``1 -> end_multiplier``
    over the remaining ``max_iter - warmup_iters`` iterations; with ``iters_per_epoch > 0``
    the cosine is evaluated once per epoch of the remaining iterations.
    """
    if max_iter <= 0:
        raise ValueError(f"SOLVER.MAX_ITER must be positive, got {max_iter}")
    warmup_iters = min(max(int(warmup_iters), 0), max_iter)
    cosine_iters = max_iter - warmup_iters
    cosine: ParamScheduler = CosineParamScheduler(1.0, end_multiplier)
    if iters_per_epoch > 0 and cosine_iters > 0:
        cosine = EpochSteppedParamScheduler(cosine, cosine_iters, iters_per_epoch)
    if warmup_iters == 0:
        return cosine
    warmup = LinearParamScheduler(warmup_factor, 1.0)
    if cosine_iters == 0:
        return warmup
    return CompositeParamScheduler(
        [warmup, cosine],
        lengths=[warmup_iters / max_iter, cosine_iters / max_iter],
        interval_scaling=["rescaled", "rescaled"],
    )


def build_pretrain_lr_scheduler(cfg, optimizer: torch.optim.Optimizer):
    """``WarmupCosineToEnd`` as a detectron2 ``LRMultiplier``; other names: detectron2's builder."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != WARMUP_COSINE_TO_END:
        return build_lr_scheduler(cfg, optimizer)
    lr = scaled_base_lr(cfg)
    if lr <= 0:
        raise ValueError(f"{WARMUP_COSINE_TO_END} needs a positive learning rate, got {lr}")
    iters_per_epoch = 0
    if cfg.SOLVER.COSINE_PER_EPOCH:
        iters_per_epoch = cfg.SOLVER.ITERS_PER_EPOCH
        if iters_per_epoch <= 0:
            raise ValueError(
                "SOLVER.COSINE_PER_EPOCH needs SOLVER.ITERS_PER_EPOCH, which the pretraining setup "
                "fills in from the dataset size (soco_d2.engine.apply_epoch_schedule)"
            )
    multiplier = warmup_cosine_to_end_multiplier(
        cfg.SOLVER.MAX_ITER,
        cfg.SOLVER.WARMUP_ITERS,
        cfg.SOLVER.WARMUP_FACTOR,
        cfg.SOLVER.COSINE_END_LR / lr,
        iters_per_epoch,
    )
    logger.info(
        "lr schedule %s: %g -> %g over %d warmup iterations, cosine to %g at iteration %d%s",
        WARMUP_COSINE_TO_END, lr * cfg.SOLVER.WARMUP_FACTOR, lr, min(cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.MAX_ITER),
        cfg.SOLVER.COSINE_END_LR, cfg.SOLVER.MAX_ITER,
        f", stepped every {iters_per_epoch} iterations (per epoch)" if iters_per_epoch else "",
    )
    return LRMultiplier(optimizer, multiplier=multiplier, max_iter=cfg.SOLVER.MAX_ITER)
