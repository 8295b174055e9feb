"""Trainers, hooks and the launcher for pretraining and transfer."""
from .hooks import IterationSeedHook, MomentumHook
from .launch import launch
from .pretrain import NonFiniteLossError, PretrainTrainer, apply_epoch_schedule, setup_pretrain_cfg
from .solver import LARS, build_pretrain_lr_scheduler, build_pretrain_optimizer
from .trainer import CPUAutocastTrainer, Trainer
from .transfer import TransferTrainer, build_transfer_evaluator

__all__ = [
    "launch",
    "CPUAutocastTrainer",
    "Trainer",
    "TransferTrainer",
    "build_transfer_evaluator",
    "PretrainTrainer",
    "NonFiniteLossError",
    "apply_epoch_schedule",
    "setup_pretrain_cfg",
    "MomentumHook",
    "IterationSeedHook",
    "LARS",
    "build_pretrain_optimizer",
    "build_pretrain_lr_scheduler",
]
