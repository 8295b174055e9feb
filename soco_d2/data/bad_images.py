"""Unreadable images met while pretraining: counted, logged with their path, and
limited by ``DATALOADER.MAX_BAD_IMAGES``.

A sample whose image cannot be decoded (zero-byte, truncated, corrupt, missing,
or listed as skipped by the proposal cache) is replaced by the next image of
the dataset, under seeds drawn from (seed, position, attempt): the data stream
stays a function of (seed, sample position), so ``--resume`` is still exact
(``soco_d2.data.build``).  The reports travel with the batches from the
dataloader workers to their process, where :class:`BadImageLog` keeps them.

What is counted: **distinct image files**, not occurrences (a bad file met in
every epoch counts once), over every process of the run.  At every iteration
each process adds the bad files of the batch it just took; with several
processes the new ones are exchanged (one small all-gather), so every process
holds the same set and all stop at the same iteration when it grows past the
limit.  The set after iteration ``i`` is therefore the distinct bad files among
the samples of iterations ``0..i``: the same for any ``NUM_WORKERS`` and any
number of processes.  It is saved in the trainer's checkpoints, so a resumed
run continues the count instead of starting from zero.
"""
from __future__ import annotations

import logging

import torch.distributed as dist
from detectron2.utils import comm

logger = logging.getLogger(__name__)

LIMIT_KEY = "DATALOADER.MAX_BAD_IMAGES"


class TooManyBadImagesError(RuntimeError):
    """More distinct unreadable images than ``DATALOADER.MAX_BAD_IMAGES``."""


def format_bad_images(found: dict, limit: int) -> str:
    lines = "\n".join(f"  {path}: {reason}" for path, reason in sorted(found.items()))
    return (
        f"{len(found)} distinct images could not be read, more than {LIMIT_KEY} = {limit}:\n{lines}\n"
        f"Fix or remove these files (then rebuild the proposal cache if the dataset changed), "
        f"or raise {LIMIT_KEY} (-1 = no limit)."
    )


class BadImageLog:
    """The distinct bad image files of a run (``{file_name: reason}``); see the module doc."""

    def __init__(self, limit: int = -1, world_size: int = 1):
        self.limit = int(limit)
        self.world_size = int(world_size)
        self.found: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.found)

    def _synchronized(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized() \
            and comm.get_world_size() == self.world_size

    def update(self, reports: dict) -> None:
        """Add one batch's reports (collective with several processes: every process calls
        it once per iteration); log the new files; raise past the limit."""
        new = {path: reason for path, reason in reports.items() if path not in self.found}
        if self._synchronized():
            gathered = {}
            for part in comm.all_gather(new):  # rank order: the same dict on every process
                gathered.update({p: r for p, r in part.items() if p not in gathered})
            new = gathered
        for path, reason in new.items():
            self.found[path] = reason
            if comm.is_main_process():
                limit = "no limit" if self.limit < 0 else f"limit {self.limit}"
                logger.warning("unreadable image %s (%s); its samples use the next image of the dataset "
                               "[%d distinct so far, %s %s]", path, reason, len(self.found), LIMIT_KEY, limit)
        self.check()

    def check(self) -> None:
        if 0 <= self.limit < len(self.found):
            raise TooManyBadImagesError(format_bad_images(self.found, self.limit))

    def state_dict(self) -> dict:
        return {"found": dict(self.found)}

    def load_state_dict(self, state: dict) -> None:
        self.found = dict(state.get("found", {}))
