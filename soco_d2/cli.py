"""What every soco_d2 command line shares: its flags (one help text each) and how it ends.

The convention (detectron2's PointRend ``train_net.py`` style), followed by every
``tools/*.py`` and so by every console entry point (``soco-d2-pretrain``, ...):

* a tool is a thin script: ``build_parser()``, ``main(args)`` (the work, in the
  library), and ``cli(argv=None)`` that parses, runs ``main`` through
  :func:`run_cli` (or the engine's ``launch_tool`` for the trainers) and returns
  the exit status;
* the shared flags come from :func:`tool_parser` and mean the same everywhere:
  ``--config-file`` + trailing ``KEY VALUE`` overrides, ``--num-gpus /
  --num-machines / --machine-rank / --dist-url``, ``--resume``, ``--overwrite``,
  ``--eval-only``, ``--unsafe-load``, ``--no-progress``, ``--debug``;
* bad input (:class:`soco_d2.errors.InputError`) ends the tool like a bad
  argument does in argparse: one line ``error: ...`` on stderr and
  ``SystemExit(2)``, no traceback unless ``--debug``.
"""
from __future__ import annotations

import argparse
import sys

from .errors import InputError

EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130

HELP = {
    "config_file": "yaml config: a path, or the name of a config shipped with soco_d2 "
    "(soco_d2.model_zoo.get_config_file), e.g. demo/soco_r50_fpn.yaml",
    "opts": "config overrides as KEY VALUE pairs after every flag, e.g. SOLVER.MAX_ITER 100 OUTPUT_DIR out/x",
    "num_gpus": "processes per machine: one per GPU with CUDA, else that many gloo CPU processes. Under torchrun, "
    "srun or another env:// launcher the tool joins the launcher's processes instead and this flag is ignored",
    "num_machines": "number of machines (each runs the same command with its own --machine-rank)",
    "machine_rank": "rank of this machine, 0..num_machines-1",
    "dist_url": "tcp://HOST:PORT of machine 0 for several machines; 'auto' (default) picks a free port on one machine",
    "resume": "continue the run in OUTPUT_DIR from its last_checkpoint (weights, optimizer, schedule, iteration and, "
    "for pretraining, momentum encoder, queues and data position)",
    "overwrite": "replace the earlier run in OUTPUT_DIR (its checkpoints, last_checkpoint, metrics.json, TensorBoard "
    "events, results.json/md, log.txt and config.yaml are deleted first); without it (or --resume) a tool refuses "
    "to write into an OUTPUT_DIR that holds a run",
    "eval_only": "only evaluate MODEL.WEIGHTS (with --resume: OUTPUT_DIR's last checkpoint); no training",
    "unsafe_load": "read weights files with plain pickle / torch.load(weights_only=False): runs any code the file "
    "holds, only for files you trust (by default .pkl/.npy go through a restricted unpickler and .pth through "
    "torch.load(weights_only=True))",
    "no_progress": "no progress bars and no periodic progress lines on the console (log.txt and metrics.json still "
    "get everything), e.g. for batch-job logs",
    "debug": "show the full traceback of an error (by default one line says what is wrong)",
}


def tool_parser(doc: str, *, prog: str | None = None, config: bool = False, launch: bool = False,
                resume: bool = False, overwrite: bool = False, eval_only: bool = False,
                unsafe_load: bool = False) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the shared flags a tool asks for (always ``--no-progress``, ``--debug``).

    ``doc``: the tool's docstring; its first paragraph is the description, the rest the epilog.
    ``config`` adds ``--config-file`` and the trailing ``KEY VALUE`` overrides (``args.opts``).
    """
    description, _, epilog = doc.strip().partition("\n\n")
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog or None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if config:
        parser.add_argument("--config-file", default="", metavar="FILE", help=HELP["config_file"])
    if launch:
        parser.add_argument("--num-gpus", type=int, default=1, metavar="N", help=HELP["num_gpus"])
        parser.add_argument("--num-machines", type=int, default=1, metavar="M", help=HELP["num_machines"])
        parser.add_argument("--machine-rank", type=int, default=0, metavar="R", help=HELP["machine_rank"])
        parser.add_argument("--dist-url", default="auto", metavar="URL", help=HELP["dist_url"])
    for flag, wanted in (("resume", resume), ("overwrite", overwrite), ("eval_only", eval_only),
                         ("unsafe_load", unsafe_load)):
        if wanted:
            parser.add_argument("--" + flag.replace("_", "-"), action="store_true", help=HELP[flag])
    parser.add_argument("--no-progress", action="store_true", help=HELP["no_progress"])
    parser.add_argument("--debug", action="store_true", help=HELP["debug"])
    if config:
        parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE", help=HELP["opts"])
    return parser


def check_resume_overwrite(args) -> None:
    """``--resume`` continues a run and ``--overwrite`` replaces it: not both."""
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        raise InputError("--resume continues the run in OUTPUT_DIR and --overwrite deletes it: give one of them")


def run_cli(func, args) -> int:
    """``func(args)`` with the tools' error policy; returns the exit status (an ``int`` that
    ``func`` returned, else 0).

    ``InputError`` -> ``error: <message>`` on stderr and ``SystemExit(2)``, as argparse
    does for a bad argument (with ``--debug``: raised, with its traceback);
    Ctrl-C -> ``SystemExit(130)``.
    """
    try:
        result = func(args)
    except InputError as err:
        if getattr(args, "debug", False):
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INPUT_ERROR) from None
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
