"""The probe hook of pretraining: the configured kNN / linear probes
(``TEST.PROBE.*``, :mod:`soco_d2.evaluation`) of the online backbone every
``TEST.PROBE.PERIOD`` iterations and after the last one, logged as
``probe/<task>_<metric>`` (``probe/region_knn_top1``, ``probe/image_knn_top1``,
...) to ``metrics.json`` and TensorBoard through the trainer's event storage.

* Every rank runs the probes (each extracts a shard; the features are gathered):
  the numbers are the same for 1 or N processes, and rank 0's writer logs them.
  Before each probe, rank 0's buffers (BatchNorm statistics) of the probed
  backbone go to every rank: with per-process BN and DDP's buffer broadcast off
  (the pretraining trainer's setting) they drift apart, and a probe must measure
  one model, the one rank 0 saves.  Training never reads them (BN uses the batch's
  statistics in training; SyncBN / FrozenBN keep them equal anyway).
* The hook sits before the metrics writer and the checkpointer, so a probe lands
  in the row of the iteration it describes (``tools/plot_metrics.py`` draws them),
  and ``model_final.pth`` is written after the last probe.
* Resume: an iteration whose probe values ``metrics.json`` already holds (a run
  killed after probing and resumed from an earlier checkpoint replays it; a
  finished run resumed ends again) is not probed again, so no iteration is
  logged twice.  The replayed state is the same (the engine resumes exactly), so
  the value on file is the one the replay would log.
* A probe whose features are NaN/inf (eval-mode BatchNorm statistics far from the
  activations, early in a run) logs an error and no values; training goes on.
"""
from __future__ import annotations

import logging
import os
import time

import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..evaluation.probe import (
    NonFiniteFeaturesError,
    configured_levels,
    extractor_from_cfg,
    probed_backbone,
    run_probes,
)
from ..errors import InputError
from .metrics import read_metrics

logger = logging.getLogger(__name__)


def probed_iterations(metrics_path: str) -> set[int]:
    """The iterations of ``metrics.json`` that hold a ``probe/`` value."""
    if not os.path.isfile(metrics_path):
        return set()
    return {int(r["iteration"]) for r in read_metrics(metrics_path, key=None) if any(k.startswith("probe/") for k in r)}


class ProbeHook(HookBase):
    """Run ``run_probes(cfg, model)`` after every ``period``-th iteration (0: only at
    the end) and after the last one; log the accuracies (see the module docstring).
    A finished run resumed runs no iteration, so it probes nothing."""

    def __init__(self, cfg, model, metrics_path: str = "", *, progress: bool = True):
        self._cfg = cfg
        self._model = model
        self._period = int(cfg.TEST.PROBE.PERIOD)
        self._metrics_path = metrics_path
        self._progress = progress
        self._logged: set[int] = set()

    def before_train(self):
        try:  # the model's own features (a C4 backbone without res5, an OUT_FEATURES short of one)
            configured_levels(self._cfg, extractor_from_cfg(self._cfg, self._model))
        except (ValueError, KeyError, FileNotFoundError) as err:
            raise InputError(f"TEST.PROBE (probe hook): {err.args[0] if isinstance(err, KeyError) else err}") from None
        found = probed_iterations(self._metrics_path) if comm.is_main_process() and self._metrics_path else set()
        self._logged = set(comm.all_gather(sorted(found))[0]) if comm.get_world_size() > 1 else found

    def after_step(self):
        # the last one too runs here, not in after_train: the writer has then already written
        # the last iteration's row and would drop values logged for it later
        next_iter = self.trainer.iter + 1
        if next_iter == self.trainer.max_iter or (self._period > 0 and next_iter % self._period == 0):
            self._probe(self.trainer.iter)

    def _probe(self, iteration: int) -> None:
        if iteration in self._logged:
            logger.info("probes of iteration %d are already in %s: not run again", iteration, self._metrics_path)
            return
        start = time.perf_counter()
        if comm.get_world_size() > 1:
            for buffer in probed_backbone(self._model).buffers():
                dist.broadcast(buffer, src=0)
        try:
            results = run_probes(self._cfg, self._model, progress=self._progress)
        except NonFiniteFeaturesError as err:  # the same on every rank (the features are gathered)
            logger.error("probes at iteration %d failed, nothing logged; training goes on: %s", iteration, err)
            return
        storage = self.trainer.storage
        scalars = results.scalars()
        for name, value in scalars.items():
            storage.put_scalar(name, value, smoothing_hint=False)
        self._logged.add(iteration)
        logger.info("probes at iteration %d (%.1f s): %s", iteration, time.perf_counter() - start,
                    ", ".join(f"{k[len('probe/'):]} {v:.2f}" for k, v in scalars.items() if k.endswith("_top1")))
