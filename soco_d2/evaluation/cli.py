"""The work behind ``tools/probe_net.py`` (``soco-d2-probe``): its arguments,
the checks before anything is built (:func:`prepare_probe`) and one process of
the run (:func:`run_probe`).

OUTPUT_DIR policy of a probe run (``engine.outputs`` for trainers): it writes
``probe_results.json`` / ``.md``, ``config.yaml`` and ``log.txt``; a folder with
earlier probe results needs ``--overwrite`` (which deletes only those files),
and a folder holding a training run is refused (its config.yaml and log.txt
would be overwritten).  Without ``OUTPUT_DIR`` on the command line, the config's
OUTPUT_DIR gets a sub-folder per weights: ``probe_<weights file name>`` or
``probe_random_init``.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
from dataclasses import dataclass

import torch
from detectron2.utils import comm

from ..checkpoint.formats import FORMATS
from ..engine.checks import check_weights_file
from ..engine.outputs import RUN_MARKERS, check_output_dir
from ..engine.setup import RunSetup, cfg_from_args, check_device, cli_keys, setup_run
from ..errors import InputError
from .backbone import build_probe_model, probe_feature_names
from .probe import check_probe_settings, run_probes
from .results import RESULTS_FILE, probe_results_markdown, write_probe_results
from .weights import load_probe_weights

logger = logging.getLogger(__name__)

PROBE_OUTPUTS = (RESULTS_FILE, "probe_results.md", "config.yaml", "log.txt", "log.txt.rank*")
# formats whose ResNet has the stride on the 3x3 conv (torchvision's layout; docs/tools/convert_to_d2.md)
TORCHVISION_LAYOUT = ("soco", "densecl", "moco", "detcon_haiku", "torchvision")


def add_probe_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The probe tool's own arguments (the shared ones come from ``soco_d2.cli.tool_parser``)."""
    parser.add_argument(
        "--weights", default=None, metavar="FILE",
        help="weights to probe, any file convert_to_d2.py reads: a pretraining checkpoint (model_final.pth: its "
        "online backbone), a converted .pkl, a torchvision ResNet, an official SoCo / DenseCL / MoCo / DetCon "
        'checkpoint; "" = random init (detectron2\'s, drawn from SEED, 0 when SEED < 0). Default: MODEL.WEIGHTS',
    )
    parser.add_argument("--format", default="auto", choices=("auto",) + FORMATS,
                        help="layout of --weights (default: detect, as convert_to_d2.py does)")
    parser.add_argument("--label", default=None, help="row label in probe_results.md (default: the weights path, "
                        "or 'random init')")
    return parser


def default_output_dir(cfg, weights: str) -> str:
    name = os.path.splitext(os.path.basename(weights))[0] if weights else "random_init"
    return os.path.join(cfg.OUTPUT_DIR, f"probe_{name}")


@dataclass
class ProbeSetup(RunSetup):
    """The checked config of a probe run, with the probe tool's OUTPUT_DIR policy."""

    def check_output_dir(self) -> None:
        output_dir = self.cfg.OUTPUT_DIR
        check_output_dir(output_dir, overwrite=True)  # set and writable (overwrite: the trainers' markers are not ours)
        run = [m for m in RUN_MARKERS if os.path.exists(os.path.join(output_dir, m))]
        if run:
            raise InputError(f"OUTPUT_DIR {output_dir} holds a training run ({', '.join(run)}); a probe writes "
                             "config.yaml and log.txt: give it a folder of its own (e.g. a sub-folder)")
        if os.path.exists(os.path.join(output_dir, RESULTS_FILE)) and not getattr(self.args, "overwrite", False):
            raise InputError(f"OUTPUT_DIR {output_dir} holds earlier probe results ({RESULTS_FILE}); pass "
                             "--overwrite to replace them, or set another OUTPUT_DIR")

    def prepare_output_dir(self) -> None:
        if getattr(self.args, "overwrite", False):
            for pattern in PROBE_OUTPUTS:
                for path in glob.glob(os.path.join(glob.escape(self.cfg.OUTPUT_DIR), pattern)):
                    os.remove(path)


def prepare_probe(args, check: bool = True) -> ProbeSetup:
    """Config of a probe run (``--weights`` into MODEL.WEIGHTS, the default OUTPUT_DIR),
    every input checked (``check``: the launching process) before anything is built."""
    cfg = cfg_from_args(args)
    if args.weights is not None:
        cfg.MODEL.WEIGHTS = args.weights
    if "OUTPUT_DIR" not in cli_keys(getattr(args, "opts", [])):
        cfg.OUTPUT_DIR = default_output_dir(cfg, cfg.MODEL.WEIGHTS)
    run = ProbeSetup(cfg, args)
    if check:
        check_device(cfg)
        run.check_output_dir()
        check_weights_file(cfg.MODEL.WEIGHTS, "--weights", getattr(args, "unsafe_load", False))
        check_probe_settings(cfg)
    cfg.freeze()
    return run


def run_probe(args, run: ProbeSetup | None = None) -> dict:
    """Build the backbone, load the weights, run the probes (every rank), write the results (rank 0)."""
    run = run or prepare_probe(args, check=False)
    cfg = setup_run(run.cfg, args)
    weights = cfg.MODEL.WEIGHTS
    torch.manual_seed(cfg.SEED if cfg.SEED >= 0 else 0)  # the same random init on every rank and run
    model = build_probe_model(cfg)
    loaded = load_probe_weights(model, weights, unsafe_load=args.unsafe_load, fmt=args.format,
                                features=probe_feature_names(cfg), depth=cfg.MODEL.RESNETS.DEPTH)
    if loaded.get("format") in TORCHVISION_LAYOUT and cfg.MODEL.RESNETS.STRIDE_IN_1X1:
        raise InputError(f"{weights} ({loaded['format']}) has the stride on the 3x3 conv; probe it with "
                         "MODEL.RESNETS.STRIDE_IN_1X1 False (and RGB, ImageNet mean/std: docs/tools/convert_to_d2.md)")
    results = run_probes(cfg, model, progress=not args.no_progress)
    if comm.is_main_process():
        path = write_probe_results(cfg.OUTPUT_DIR, results, weights, label=args.label, cfg=cfg,
                                   config_file=getattr(args, "config_file", None))
        print(probe_results_markdown([(args.label or weights or "random init", results.metrics)]), flush=True)
        print(f"wrote {path}", flush=True)
    return results.metrics
