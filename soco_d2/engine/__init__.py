"""The engine, one module per job:

* ``setup``: config get + merge (``cfg_from_args``), the device rule (``is_cuda_run``),
  run setup (``setup_run``: loggers, config.yaml, seeds);
* ``launch``: processes (torchrun / srun / env:// join, detectron2's launch on
  CUDA, gloo CPU processes) and ``launch_tool``, the trainers' command line;
* ``checks`` and ``outputs``: fail-early input checks and the OUTPUT_DIR policy;
* ``trainer``: the base ``Trainer``; ``steps``: the optimizer step (precision,
  gradient accumulation); ``resume``: every process resumes the same way;
  ``pretrain``: the pretraining setup and ``PretrainTrainer``; ``transfer``: ``TransferTrainer``;
* ``metrics``: the NaN guard, metrics writers and the loss summary;
* ``evaluators`` and ``results``: transfer evaluation and its tables;
* ``hooks``, ``norms``, ``solver``: momentum / seed hooks, BatchNorm policy, LARS and schedules.
"""
from .evaluators import build_transfer_evaluator
from .hooks import IterationSeedHook, MomentumHook
from .launch import launch, launch_tool
from .metrics import NonFiniteLossError
from .pretrain import PretrainTrainer, apply_epoch_schedule, prepare_pretrain, print_loss_summary
from .results import compare_results, write_results
from .setup import cfg_from_args, is_cuda_run, setup_run
from .solver import LARS, build_pretrain_lr_scheduler, build_pretrain_optimizer
from .steps import StepTrainer
from .trainer import Trainer
from .transfer import TransferTrainer, prepare_transfer, run_transfer

__all__ = [
    "launch",
    "launch_tool",
    "cfg_from_args",
    "is_cuda_run",
    "setup_run",
    "StepTrainer",
    "Trainer",
    "TransferTrainer",
    "prepare_transfer",
    "run_transfer",
    "build_transfer_evaluator",
    "compare_results",
    "write_results",
    "PretrainTrainer",
    "prepare_pretrain",
    "print_loss_summary",
    "NonFiniteLossError",
    "apply_epoch_schedule",
    "MomentumHook",
    "IterationSeedHook",
    "LARS",
    "build_pretrain_optimizer",
    "build_pretrain_lr_scheduler",
]
