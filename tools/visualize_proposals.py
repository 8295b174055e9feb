#!/usr/bin/env python
"""Draw the cached boxes or label maps of a few images onto the photos, as PNGs.

examples:
  visualize_proposals.py --cache proposals/demo_images_ss.pcache --dataset demo_images --output-dir output/vis_ss --num 4
  visualize_proposals.py --cache proposals/demo_images_fh.pcache --dataset demo_images \\
      --images astronaut rocket --output-dir output/vis_fh

Installed as soco-d2-visualize. Docs: docs/tools/visualize_proposals.md.
"""
import sys

import soco_d2  # noqa: F401  (compat shims before any detectron2 import)
from soco_d2.cli import run_cli, tool_parser
from soco_d2.proposals.cli import add_visualize_arguments, run_visualize


def build_parser():
    return add_visualize_arguments(tool_parser(__doc__, prog="visualize_proposals.py"))


def main(args) -> int:
    return run_visualize(args)


def cli(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(main, args)


if __name__ == "__main__":
    sys.exit(cli())
