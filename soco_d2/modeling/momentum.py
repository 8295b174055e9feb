"""Momentum (EMA) target networks: the part BYOL, SoCo, DetCon-B, MoCo-v2 and
DenseCL share."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn


def build_target(modules: dict[str, nn.Module]) -> nn.ModuleDict:
    """Frozen copies of the online modules, under the same names.

    The copies start equal to the online weights and never receive gradients;
    they change only through ``ema_update_``.  Buffers (BN running stats) are
    copied once and then evolve from the target's own forward passes, as in
    the official implementations.
    """
    target = nn.ModuleDict({name: copy.deepcopy(module) for name, module in modules.items()})
    for param in target.parameters():
        param.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, tau: float) -> None:
    """theta_target <- tau * theta_target + (1 - tau) * theta_online, parameters only."""
    target_params = list(target.parameters())
    online_params = list(online.parameters())
    if len(target_params) != len(online_params):
        raise ValueError("target and online networks differ in structure")
    torch._foreach_lerp_(target_params, [p.detach() for p in online_params], 1.0 - tau)


def momentum_at(iteration: int, max_iter: int, base: float, schedule: str = "cosine") -> float:
    """tau at an iteration: ``constant`` (MoCo, DenseCL) or ``cosine`` from
    ``base`` to 1 over ``max_iter`` iterations (BYOL, SoCo, DetCon).

    A pure function of the iteration, so a resumed run continues the schedule
    (the official SoCo code restarts it at every resume).
    """
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise ValueError(f"unknown MODEL.SSL.MOMENTUM_SCHEDULE {schedule!r}; expected 'cosine' or 'constant'")
    progress = min(max(iteration / max(max_iter, 1), 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
