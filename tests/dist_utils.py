"""Run a function in N CPU processes under gloo, through soco_d2's own launcher.

    results = run_in_gloo_processes(fn, 2, arg1, arg2)   # [rank 0's return, rank 1's]

``fn`` must be importable by the spawned processes (a module-level function of
a test module or of this package); inside it, ``torch.distributed`` and
detectron2's ``comm`` (world size, rank, local process group) are set up.
Return values travel back with ``torch.save`` (tensors, dicts, lists, str...).
With ``world_size == 1`` the function runs in this process, without
``torch.distributed``: the single-process reference of a DDP comparison.
"""
from __future__ import annotations

import os
import tempfile
from datetime import timedelta

import soco_d2  # noqa: F401  (compat shims before detectron2)
import torch
from detectron2.utils import comm

from soco_d2.engine.launch import launch


def _worker(fn, result_dir, args, kwargs):
    result = fn(*args, **kwargs)
    torch.save(result, os.path.join(result_dir, f"rank{comm.get_rank()}.pt"))


def run_in_gloo_processes(fn, world_size: int, *args, timeout_s: float = 300, **kwargs) -> list:
    """``[fn(*args, **kwargs) on rank r for r in range(world_size)]``; an exception in any
    rank is raised here (torch.multiprocessing's ProcessRaisedException with its traceback)."""
    with tempfile.TemporaryDirectory(prefix="soco_d2-gloo-") as result_dir:
        launch(_worker, world_size, args=(fn, result_dir, args, kwargs), use_cuda=False,
               timeout=timedelta(seconds=timeout_s))
        return [torch.load(os.path.join(result_dir, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]


def one_training_step(cfg, init_seed: int = 0) -> dict:
    """Build ``PretrainTrainer(cfg)`` (same init in every process), run one step on
    global batch 0 and return what a DDP check compares: the online gradients, the
    parameter updates of the step, the logged total_loss (rank 0), the norm types and
    this rank's batch size.  Run it through ``run_in_gloo_processes``."""
    from detectron2.utils.events import EventStorage

    from soco_d2.engine import PretrainTrainer
    from soco_d2.engine.hooks import unwrap_model

    torch.manual_seed(init_seed)  # DDP broadcasts rank 0's weights anyway; the 1-process run needs the same
    trainer = PretrainTrainer(cfg)
    before = {n: p.detach().clone() for n, p in unwrap_model(trainer._trainer.model).named_parameters()}
    with EventStorage(0) as storage:
        trainer._trainer.run_step()
        total = storage.latest()["total_loss"][0] if comm.is_main_process() else None
    model = unwrap_model(trainer._trainer.model)
    return {
        "world_size": comm.get_world_size(),
        "norms": sorted({type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}),
        "batch_size": trainer.train_loader.batch_size,
        "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        "updates": {n: p.detach() - before[n] for n, p in model.named_parameters()},
        "total_loss": total,
    }


def assert_same_step(single: dict, ranks: list[dict], rel: float = 2e-4, abs_: float = 1e-5,
                     abs_update: float = 3e-8) -> None:
    """The N-process step equals the 1-process step on the same global batch.

    Per tensor, ``max|g_N - g_1| <= rel * max|g_1| + abs_``: float32 reductions run
    in another order (naiveSyncBN also computes var as E[x^2] - E[x]^2), and the
    biases in front of a BN have a zero gradient up to rounding noise.
    """
    import pytest

    assert ranks[0]["total_loss"] == pytest.approx(single["total_loss"], rel=1e-5)
    assert single["grads"].keys() == ranks[0]["grads"].keys()
    for rank in ranks[1:]:
        assert rank["grads"].keys() == ranks[0]["grads"].keys()
        for name, grad in rank["grads"].items():
            assert torch.equal(grad, ranks[0]["grads"][name]), f"{name}: DDP gradients differ between ranks"
    for name, grad in single["grads"].items():
        error = (ranks[0]["grads"][name] - grad).abs().max().item()
        assert error <= rel * grad.abs().max().item() + abs_, (name, error, grad.abs().max().item())
    # updates (after - before) are resolved to float32 steps of the weights (~1e-8 here)
    for name, update in single["updates"].items():
        error = (ranks[0]["updates"][name] - update).abs().max().item()
        assert error <= 10 * rel * update.abs().max().item() + abs_update, (name, error, update.abs().max().item())
    assert max(u.abs().max().item() for u in single["updates"].values()) > 1000 * abs_update, "no step to compare"
