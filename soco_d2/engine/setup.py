"""Config setup and the device policy every tool shares.

* :func:`cfg_from_args`: the one get + merge (soco_d2's defaults, ``--config-file``
  as a path or a shipped config name, then ``KEY VALUE`` overrides); a wrong
  key, value or file is an :class:`InputError` that says where it came from;
* :func:`is_cuda_run`: the one rule for "does this run use CUDA" (the launcher,
  the BatchNorm policy and the step trainer all ask it);
* :func:`setup_run`: freeze, then what detectron2's ``default_setup`` does
  (loggers, environment, config.yaml, seeds) without colour codes in ``log.txt``,
  and with ``--no-progress`` the console's periodic progress lines left out.
"""
from __future__ import annotations

import difflib
import logging
import os
import re
import sys
from dataclasses import dataclass

import torch
import yaml
from detectron2.config import CfgNode
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..config import get_pretrain_cfg
from ..errors import InputError
from ..model_zoo import get_config_file
from .outputs import check_output_dir, prepare_output_dir

logger = logging.getLogger(__name__)

# Loggers whose records only report progress (detectron2's and soco_d2's metric printers,
# the evaluator's "Inference done i/N"): what --no-progress keeps off the console.
PROGRESS_LOGGERS = ("detectron2.utils.events", "soco_d2.engine.metrics.progress")
PROGRESS_PREFIXES = ("Inference done ",)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def resolve_config_file(name: str) -> str:
    """``name`` if it is a file, else the config shipped with soco_d2 under that name."""
    if os.path.isfile(name):
        return name
    try:
        return get_config_file(name)
    except FileNotFoundError:
        raise InputError(f"--config-file {name!r}: no such file, and no config of that name ships with soco_d2 "
                         "(soco_d2.model_zoo.list_configs() lists them)") from None


def _all_keys(cfg: CfgNode, prefix: str = "") -> list[str]:
    keys = []
    for key, value in cfg.items():
        keys += _all_keys(value, f"{prefix}{key}.") if isinstance(value, CfgNode) else [prefix + key]
    return keys


def _merge_error(err: Exception, where: str, cfg: CfgNode) -> InputError:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    match = re.search(r"Non-existent (?:config )?key: ([\w.]+)", text)
    if match:
        close = difflib.get_close_matches(match.group(1), _all_keys(cfg), n=3, cutoff=0.7)
        hint = f"; did you mean {' or '.join(close)}?" if close else " (every key is defined in soco_d2/config.py or detectron2's defaults)"
        return InputError(f"{where}: unknown config key {match.group(1)}{hint}")
    return InputError(f"{where}: {text}")


def cfg_from_args(args) -> CfgNode:
    """soco_d2's defaults + ``args.config_file`` + ``args.opts``: unfrozen, nothing derived."""
    cfg = get_pretrain_cfg()
    config_file = getattr(args, "config_file", "")
    if not config_file:
        raise InputError("--config-file is required (a path, or a shipped config name such as demo/soco_r50_fpn.yaml)")
    path = resolve_config_file(config_file)
    try:
        cfg.merge_from_file(path)
    except (KeyError, ValueError, TypeError, AssertionError, OSError, yaml.YAMLError) as err:
        raise _merge_error(err, f"--config-file {path}", cfg) from None
    opts = list(getattr(args, "opts", None) or [])
    flags = [o for o in opts if str(o).startswith("--")]
    if flags:
        raise InputError(f"{flags[0]} comes after the KEY VALUE overrides; put every flag before them")
    if len(opts) % 2:
        raise InputError(f"config overrides must be KEY VALUE pairs; {opts[-1]!r} has no value")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, TypeError, AssertionError) as err:
        raise _merge_error(err, "command line", cfg) from None
    return cfg


def cli_keys(opts) -> list[str]:
    """The KEY entries of the command line's trailing ``KEY VALUE`` pairs."""
    return list(opts[0::2]) if opts else []


def is_cuda_run(cfg: CfgNode) -> bool:
    """Whether this run's model goes to a CUDA device: ``MODEL.DEVICE cuda*`` and CUDA is there."""
    return str(cfg.MODEL.DEVICE).startswith("cuda") and torch.cuda.is_available()


def check_device(cfg: CfgNode) -> None:
    if str(cfg.MODEL.DEVICE).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no CUDA device is available; add "
                         "`MODEL.DEVICE cpu` (or use a configs/demo/ or configs/transfer/demo_* config on a CPU)")


class _PlainFormatter(logging.Formatter):
    """The file handlers' formatter without terminal colour codes (detectron2 and termcolor
    colour some messages themselves, e.g. missing-key lists and dataset tables)."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self._inner = inner

    def format(self, record):
        return _ANSI.sub("", self._inner.format(record))


class _NoProgress(logging.Filter):
    def filter(self, record):
        return record.name not in PROGRESS_LOGGERS and not str(record.msg).startswith(PROGRESS_PREFIXES)


def _is_console(handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)


def setup_loggers(output_dir: str, no_progress: bool = False) -> None:
    """detectron2's, fvcore's and soco_d2's loggers: console (rank 0) and OUTPUT_DIR/log.txt."""
    rank = comm.get_rank()
    for name in ("fvcore", "detectron2", "soco_d2"):
        for handler in setup_logger(output_dir, distributed_rank=rank, name=name).handlers:
            if not _is_console(handler) and not isinstance(handler.formatter, _PlainFormatter):
                handler.setFormatter(_PlainFormatter(handler.formatter))
            if _is_console(handler) and no_progress and not any(isinstance(f, _NoProgress) for f in handler.filters):
                handler.addFilter(_NoProgress())


def setup_run(cfg: CfgNode, args, notes=()) -> CfgNode:
    """Freeze ``cfg`` and do detectron2's ``default_setup`` (log.txt without colour codes);
    ``notes`` are log lines of the setup (e.g. the epoch schedule)."""
    cfg.freeze()
    output_dir = cfg.OUTPUT_DIR
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    setup_loggers(output_dir, getattr(args, "no_progress", False))
    log = logging.getLogger("detectron2")
    log.info("Rank of current process: %d. World size: %d", comm.get_rank(), comm.get_world_size())
    log.info("Environment info:\n%s", collect_env_info())
    log.info("Command line arguments: %s", args)
    if getattr(args, "config_file", ""):
        path = resolve_config_file(args.config_file)
        with open(path) as f:
            log.info("Contents of --config-file %s:\n%s", path, f.read())
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        log.info("Running with full config:\n%s", cfg.dump())
        with open(path, "w") as f:
            f.write(cfg.dump())
        log.info("Full config saved to %s", path)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + comm.get_rank())
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
    for note in notes:
        logger.info(note)
    return cfg


@dataclass
class RunSetup:
    """What a trainer tool's ``prepare(args)`` found, checked, in the launching process:
    the config, the dataset dicts it listed (pretraining) and log lines for later."""

    cfg: CfgNode
    args: object
    dataset_dicts: list | None = None
    notes: tuple = ()

    @property
    def cuda(self) -> bool:
        return is_cuda_run(self.cfg)

    def prepare_output_dir(self) -> None:
        """``--overwrite``: delete the earlier run (global rank 0 only; see ``engine.outputs``)."""
        prepare_output_dir(self.cfg.OUTPUT_DIR, resume=getattr(self.args, "resume", False),
                           overwrite=getattr(self.args, "overwrite", False),
                           eval_only=getattr(self.args, "eval_only", False))

    def check_output_dir(self) -> None:
        check_output_dir(self.cfg.OUTPUT_DIR, resume=getattr(self.args, "resume", False),
                         overwrite=getattr(self.args, "overwrite", False),
                         eval_only=getattr(self.args, "eval_only", False))
