"""The NaN/inf guard and the metrics helpers of the trainers.

* :func:`check_finite_losses`: stops every rank together, before the optimizer
  step, when the loss is NaN/inf on any rank (no checkpoint of a bad state);
* :func:`write_pretrain_metrics`: every loss term is logged, even a single one;
* :class:`MedianMetricPrinter`: detectron2's console line, saying that its losses
  are medians ("median of 20") and not the raw values in ``metrics.json``;
* :func:`read_metrics` / :func:`loss_curve_summary` / :func:`format_loss_summary`:
  the loss-curve summary a pretraining run ends with.
"""
from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
import torch
import torch.distributed as dist
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, get_event_storage

logger = logging.getLogger(__name__)


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


class MedianMetricPrinter(CommonMetricPrinter):
    """detectron2's console progress line (ETA, losses, times, lr, memory), with a legend:
    its losses are the median of the last ``window_size`` iterations (fewer at the start),
    so they differ from the raw values in ``metrics.json`` and from the loss summary."""

    def __init__(self, max_iter: int | None = None, window_size: int = 20):
        super().__init__(max_iter, window_size)
        self.logger = logging.getLogger(__name__ + ".progress")

    def write(self):
        storage = get_event_storage()
        if storage.iter == self._max_iter:
            return
        losses = {k: v for k, v in storage.histories().items() if "loss" in k}
        if not losses:
            return super().write()
        n = min(self._window_size, len(next(iter(losses.values())).values()))
        line = "  ".join(f"{k}: {v.median(self._window_size):.4g}" for k, v in losses.items())
        try:
            data_time = f"data_time: {storage.history('data_time').avg(20):.4f}  "
        except KeyError:
            data_time = ""
        try:
            iter_time = f"time: {storage.history('time').global_avg():.4f}  "
        except KeyError:
            iter_time = ""
        try:
            lr = f"{storage.history('lr').latest():.5g}"
        except KeyError:
            lr = "N/A"
        eta = self._get_eta(storage)
        memory = f"  max_mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}M" if torch.cuda.is_available() else ""
        self.logger.info(f" {f'eta: {eta}  ' if eta else ''}iter: {storage.iter}  losses (median of {n}): {line}  "
                         f"{iter_time}{data_time}lr: {lr}{memory}")


# --------------------------------------------------------------------------- loss summary


def end_partial_line(path: str) -> None:
    """Terminate a last line cut short (a run killed while writing ``metrics.json``)."""
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def read_metrics(path: str, max_iter: int | None = None, key: str | None = "total_loss") -> list[dict]:
    """The rows of a detectron2 ``metrics.json``, one per iteration in order: every row
    written for an iteration merged, a later value winning (a resumed run rewrites the
    iterations after its checkpoint; the writer puts values logged at another time,
    e.g. probe accuracies, in rows of their own).  A row cut short by a killed run is
    skipped.  Only iterations that have ``key`` (None: every iteration) and, with
    ``max_iter``, iterations below it.  The one reader of ``metrics.json``: the loss
    summary, the probe hook and ``tools/plot_metrics.py`` use it."""
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
            if isinstance(row, dict) and "iteration" in row and (max_iter is None or row["iteration"] < max_iter):
                rows.setdefault(int(row["iteration"]), {}).update(row)
    return [rows[k] for k in sorted(rows) if key is None or key in rows[k]]


def loss_curve_summary(metrics_path: str, fraction: float = 0.1, max_iter: int | None = None) -> dict:
    """First / last (means over the first and last ``fraction`` of the logged
    iterations, at least one row each) and min of ``total_loss``.

    Iterations whose negatives queue (MoCo-v2, DenseCL) still held random
    initial keys (a ``*queue_filled`` metric below 1) are left out: their loss
    is lower than any loss once the queue holds real keys (the early "rise"
    of queue methods), so it says nothing about learning."""
    rows = read_metrics(metrics_path, max_iter)
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
