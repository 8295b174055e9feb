#!/usr/bin/env python
"""Probe frozen features of any weights: weighted kNN and linear probes at image level
(globally pooled res5 of labelled image folders) and object level (RoIAlign of the
ground-truth boxes of detectron2 instance datasets), as configured by TEST.PROBE.*.

examples:
  probe_net.py --config-file configs/demo/soco_r50_fpn.yaml --weights output/demo/pretrain/soco_r50_fpn/model_final.pth
  probe_net.py --config-file configs/demo/soco_r50_fpn.yaml --weights ""          # random init
  probe_net.py --config-file configs/soco_r50_fpn.yaml --num-gpus 8 --weights densecl_r50_imagenet_200ep.pth \\
      TEST.PROBE.IMAGE_MEMORY imagenet_train TEST.PROBE.IMAGE_QUERIES imagenet_val TEST.PROBE.MAX_MEMORY_IMAGES 100000

--weights reads every input of convert_to_d2.py (our pretraining checkpoints: the online
backbone, a C4 region head's res5 as res5; converted .pkl; torchvision; official SoCo /
DenseCL / MoCo / DetCon), safely unless --unsafe-load. The backbone is the config's
(MODEL.BACKBONE, RESNETS, FPN; INPUT.FORMAT and PIXEL_MEAN/STD for the images).
Writes OUTPUT_DIR/probe_results.json (the schema of transfer's results.json, read by
collect_results.py) and probe_results.md; without OUTPUT_DIR on the command line,
<config OUTPUT_DIR>/probe_<weights name>. Exit status 2: bad input (one line says why).
Installed as soco-d2-probe. Docs: docs/tools/probe_net.md.
"""
import sys

import soco_d2  # noqa: F401  (compat shims before any detectron2 import)
from soco_d2.cli import tool_parser
from soco_d2.engine import launch_tool
from soco_d2.evaluation.cli import add_probe_arguments, prepare_probe, run_probe


def build_parser():
    parser = tool_parser(__doc__, prog="probe_net.py", config=True, launch=True, overwrite=True, unsafe_load=True)
    return add_probe_arguments(parser)


def main(args, run=None):
    """One process of the run (``run``: the checked setup when it was made in this process)."""
    return run_probe(args, run)


def cli(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return launch_tool(main, args, prepare_probe)


if __name__ == "__main__":
    sys.exit(cli())
