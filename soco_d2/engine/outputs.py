"""OUTPUT_DIR policy: a run never overwrites, or mixes with, an earlier run unless told to.

* :func:`check_output_dir` (before anything is built): OUTPUT_DIR must be a
  folder this process can write; if it holds a run (``model_final.pth``,
  ``last_checkpoint``, ``metrics.json`` or ``results.json``) the tool needs
  ``--resume`` (continue it) or ``--overwrite`` (replace it); ``--resume`` needs
  the checkpoint ``last_checkpoint`` names to exist.
* :func:`prepare_output_dir` (on global rank 0, after the checks): ``--overwrite``
  deletes the earlier run's files (only those a run writes, listed in
  ``RUN_OUTPUTS``; ``--eval-only`` only its results), so ``metrics.json``,
  TensorBoard events and the loss summary describe the new run alone.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile

from ..errors import InputError

logger = logging.getLogger(__name__)

RUN_MARKERS = ("model_final.pth", "last_checkpoint", "metrics.json", "results.json")
RUN_OUTPUTS = ("model_*.pth", "model_*.pth.tmp", "last_checkpoint", "last_checkpoint.tmp", "metrics.json",
               "events.out.tfevents.*", "results.json", "results.md", "log.txt", "log.txt.rank*", "config.yaml",
               "inference")
EVAL_OUTPUTS = ("results.json", "results.md", "inference")


def earlier_run(output_dir: str, eval_only: bool = False) -> list[str]:
    """The files in ``output_dir`` that show it holds a run (for ``--eval-only``: its results)."""
    markers = ("results.json",) if eval_only else RUN_MARKERS
    return [m for m in markers if os.path.exists(os.path.join(output_dir, m))]


def _check_writable(output_dir: str) -> None:
    parent = os.path.abspath(output_dir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError(f"OUTPUT_DIR {output_dir}: {parent} is a file, not a folder")
    try:  # os.access says yes to root even on a read-only file system: try it
        fd, probe = tempfile.mkstemp(prefix=".soco_d2-write-test-", dir=parent)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise InputError(f"OUTPUT_DIR {output_dir} cannot be written ({parent}: {err.strerror}); "
                         "set OUTPUT_DIR to a folder you can write") from None


def check_output_dir(output_dir: str, *, resume: bool = False, overwrite: bool = False,
                     eval_only: bool = False) -> None:
    """Raise ``InputError`` unless the run may write into ``output_dir`` (see the module docstring)."""
    if not output_dir:
        raise InputError("OUTPUT_DIR is empty: set it to the folder this run writes to")
    _check_writable(output_dir)
    last = os.path.join(output_dir, "last_checkpoint")
    if resume and os.path.isfile(last):
        with open(last) as f:
            name = f.read().strip()
        if not os.path.isfile(os.path.join(output_dir, name)):
            raise InputError(f"--resume: {last} names {name!r}, which is not in {output_dir}")
    found = earlier_run(output_dir, eval_only)
    if found and not (resume or overwrite):
        what = "the results of an earlier evaluation" if eval_only else "an earlier run"
        raise InputError(
            f"OUTPUT_DIR {output_dir} holds {what} ({', '.join(found)}); pass --resume to continue it, "
            "--overwrite to replace it, or set another OUTPUT_DIR"
        )


def prepare_output_dir(output_dir: str, *, resume: bool = False, overwrite: bool = False,
                       eval_only: bool = False) -> list[str]:
    """Delete the earlier run's files when asked to (see the module docstring); returns them."""
    patterns = ()
    if overwrite:
        patterns = EVAL_OUTPUTS if eval_only else RUN_OUTPUTS
    elif resume and not eval_only and not os.path.isfile(os.path.join(output_dir, "last_checkpoint")):
        # a run killed before its first checkpoint restarts at iteration 0: its rows would mix in
        patterns = ("metrics.json", "events.out.tfevents.*")
    removed = sorted({p for pattern in patterns for p in glob.glob(os.path.join(glob.escape(output_dir), pattern))})
    for path in removed:
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    if removed:
        logger.warning("OUTPUT_DIR %s: removed the earlier run's %s", output_dir,
                       ", ".join(os.path.basename(p) for p in removed))
    return removed
