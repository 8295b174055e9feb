"""One optimizer step of every soco_d2 run: its precision and gradient accumulation.

:class:`StepTrainer` is detectron2's ``SimpleTrainer`` step (forward, backward,
metrics, optimizer step) with

* a :class:`Precision`, resolved once from the config by :func:`resolve_precision`:
  float32, bfloat16 autocast (no gradient scaler: bf16 keeps float32's exponent
  range) or float16 autocast with torch's ``GradScaler``; ``SOLVER.AMP.DTYPE``
  "auto" takes bf16 where the GPU runs it natively, and a CPU always runs bf16
  (detectron2 0.6's ``AMPTrainer`` is float16 only and asserts CUDA);
* ``SOLVER.ACCUMULATE_STEPS``: the loader yields the step's batch as that many
  equal slices; each slice's loss is divided by their number and back-propagated
  (under DDP's ``no_sync`` but the last, so gradients are all-reduced once), then
  one optimizer step.  Hooks, the schedule, checkpoints and the iteration count
  see one step, as without accumulation;
* the grad-scaler state in checkpoints, and optional on resume (a checkpoint of
  a float32 / bf16 run, or of detectron2's ``SimpleTrainer``, has none).

:class:`PretrainStepTrainer` adds the pretraining NaN/inf guard and full loss logging.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import torch
from detectron2.engine import SimpleTrainer
from torch.nn.parallel import DistributedDataParallel

from ..errors import InputError
from .hooks import unwrap_model
from .metrics import check_finite_losses, write_pretrain_metrics
from .setup import is_cuda_run

logger = logging.getLogger(__name__)

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
AMP_DTYPE_CHOICES = ("auto", *AMP_DTYPES)


@dataclass(frozen=True)
class Precision:
    """How a step runs its forward: ``dtype`` None is float32 (no autocast)."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None
    grad_scaler: bool = False
    why: str = ""

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def describe(self) -> str:
        name = "float32" if self.dtype is None else f"{str(self.dtype).replace('torch.', '')} autocast"
        scaler = ", GradScaler" if self.grad_scaler else ""
        return f"precision: {name} on {self.device_type}{scaler}" + (f" ({self.why})" if self.why else "")


def check_amp_dtype(cfg) -> str:
    name = str(cfg.SOLVER.AMP.get("DTYPE", "auto"))  # a stock detectron2 config (transfer) has no DTYPE
    if name not in AMP_DTYPE_CHOICES:
        raise InputError(f"SOLVER.AMP.DTYPE {name!r}: use one of {', '.join(AMP_DTYPE_CHOICES)}")
    return name


def cuda_runs_bf16() -> bool:
    """Whether this GPU runs bfloat16 natively (compute capability 8.0+), not emulated."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no emulation flag (and reports native support only)
        return torch.cuda.is_bf16_supported()


def resolve_precision(cfg, cuda: bool | None = None) -> Precision:
    """The :class:`Precision` of ``SOLVER.AMP`` on this machine (``cuda``: :func:`is_cuda_run`)."""
    name = check_amp_dtype(cfg)
    cuda = is_cuda_run(cfg) if cuda is None else cuda
    device = "cuda" if cuda else "cpu"
    if not cfg.SOLVER.AMP.ENABLED:
        return Precision(device, None, False, "SOLVER.AMP.ENABLED False")
    if not cuda:
        why = "CPU autocast runs bfloat16" + ("; SOLVER.AMP.DTYPE float16 applies on CUDA" if name == "float16" else "")
        return Precision("cpu", torch.bfloat16, False, why)
    native = cuda_runs_bf16()
    if name == "auto":
        name = "bfloat16" if native else "float16"
        why = f"SOLVER.AMP.DTYPE auto: this GPU {'runs' if native else 'does not run'} bfloat16 natively"
    else:
        why = f"SOLVER.AMP.DTYPE {name}"
        if name == "bfloat16" and not native:
            logger.warning("SOLVER.AMP.DTYPE bfloat16 on a GPU without native bfloat16 (compute capability < 8.0) "
                           "is emulated and slow; float16 (or auto) is the fast choice there")
    return Precision("cuda", AMP_DTYPES[name], name == "float16", why)


def make_grad_scaler(device_type: str):
    try:
        return torch.amp.GradScaler(device_type)
    except (AttributeError, TypeError):  # torch < 2.3: CUDA only
        return torch.cuda.amp.GradScaler()


class StepTrainer(SimpleTrainer):
    """``SimpleTrainer`` with a :class:`Precision` and gradient accumulation (module docstring).

    With ``accumulate_steps`` > 1 the data loader yields, per step, a list of that
    many batches (``soco_d2.data.build.PretrainLoader`` does).
    """

    def __init__(self, model, data_loader, optimizer, precision: Precision | None = None, accumulate_steps: int = 1):
        super().__init__(model, data_loader, optimizer)
        self.precision = precision if precision is not None else Precision()
        self.accumulate_steps = int(accumulate_steps)
        if self.accumulate_steps < 1:
            raise ValueError(f"accumulate_steps must be >= 1, got {accumulate_steps}")
        self.grad_scaler = make_grad_scaler(self.precision.device_type) if self.precision.grad_scaler else None

    @contextlib.contextmanager
    def _slice(self, last: bool):
        """Every slice but the step's last: no DDP all-reduce, metrics held for the step."""
        module = unwrap_model(self.model)
        held = hasattr(module, "hold_metrics")
        with contextlib.ExitStack() as stack:
            if not last and isinstance(self.model, DistributedDataParallel):
                stack.enter_context(self.model.no_sync())
            if held:
                module.hold_metrics = not last
            try:
                yield
            finally:
                if held:
                    module.hold_metrics = False

    def run_step(self):
        assert self.model.training, "[StepTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        slices = data if self.accumulate_steps > 1 else [data]
        if len(slices) != self.accumulate_steps:
            raise ValueError(f"SOLVER.ACCUMULATE_STEPS {self.accumulate_steps}: the loader gave {len(slices)} slices")
        self.optimizer.zero_grad()
        step_losses: dict[str, torch.Tensor] = {}
        for index, batch in enumerate(slices):
            with self._slice(last=index == len(slices) - 1):
                with self.precision.autocast():
                    loss_dict = self.model(batch)
                if isinstance(loss_dict, torch.Tensor):
                    loss_dict = {"total_loss": loss_dict}
                loss_dict = {k: v.float() for k, v in loss_dict.items()}
                losses = sum(loss_dict.values())
                if len(slices) > 1:
                    losses = losses / len(slices)  # the step's loss is the mean of its slices' losses
                (self.grad_scaler.scale(losses) if self.grad_scaler is not None else losses).backward()
            if len(slices) > 1:  # the step's metrics: the mean over its slices
                for name, value in loss_dict.items():
                    value = value.detach() / len(slices)
                    step_losses[name] = step_losses[name] + value if name in step_losses else value
        self._write_metrics(step_losses if len(slices) > 1 else loss_dict, data_time)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self):
        state = super().state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is None:
            return
        if state_dict.get("grad_scaler"):  # a disabled scaler saves {}, which GradScaler refuses to load
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
        else:
            logger.warning("the checkpoint has no float16 grad-scaler state (saved by a float32 or bfloat16 run): "
                           "the loss scale starts at its default and settles within a few steps")


class PretrainStepTrainer(StepTrainer):
    """:class:`StepTrainer` with the NaN/inf guard and full loss logging of pretraining.

    ``_write_metrics`` runs after backward and before the optimizer step, so
    raising there leaves the weights (and every checkpoint) untouched.
    """

    nan_guard: bool = True
    last_checkpoint_fn = None  # callable -> str, set by PretrainTrainer

    def _write_metrics(self, loss_dict, data_time: float, prefix: str = "") -> None:
        if self.nan_guard:
            hint = self.last_checkpoint_fn() if self.last_checkpoint_fn is not None else ""
            check_finite_losses(loss_dict, self.iter, hint)
        write_pretrain_metrics(loss_dict, data_time, prefix)


def build_step_trainer(cfg, model, data_loader, optimizer, cls=StepTrainer, accumulate_steps: int = 1):
    """``cls`` with the run's precision (logged)."""
    precision = resolve_precision(cfg)
    logger.info("%s%s", precision.describe(),
                f"; {accumulate_steps} accumulation steps per optimizer step" if accumulate_steps > 1 else "")
    return cls(model, data_loader, optimizer, precision=precision, accumulate_steps=accumulate_steps)
