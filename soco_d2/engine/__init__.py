"""Trainers, hooks and the launcher for pretraining and transfer."""
from .launch import launch
from .trainer import CPUAutocastTrainer, Trainer
from .transfer import TransferTrainer, build_transfer_evaluator

__all__ = ["launch", "CPUAutocastTrainer", "Trainer", "TransferTrainer", "build_transfer_evaluator"]
