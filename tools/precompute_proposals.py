#!/usr/bin/env python
"""Precompute selective-search boxes (SoCo) or Felzenszwalb label maps (DetCon)
for a whole dataset into one memory-mapped cache file.

examples:
  # boxes for the demo photos with the default (fast) preset, 2 processes
  precompute_proposals.py --dataset demo_images --method selective_search \\
      --output proposals/demo_images_ss.pcache --workers 2
  # DetCon masks of ImageNet on 16 machines (run each shard anywhere), then merge
  precompute_proposals.py --dataset imagenet_train --method felzenszwalb \\
      --output proposals/imagenet_fh.pcache --workers 16 --num-shards 16 --shard-id $I
  precompute_proposals.py --merge --output proposals/imagenet_fh.pcache
  # the official SoCo tool's exact settings, and its JSON format
  precompute_proposals.py --image-dir /data/imgs --method selective_search --preset paper \\
      --output ss_paper.pcache --export-json ss_paper.json

A killed run resumes when rerun with the same arguments (finished chunks are
kept in OUTPUT.parts/); the final file is byte-identical to an uninterrupted
run's. Unreadable images are skipped with a reason (listed in the summary and
the cache header); they never stop the run. The format is described in
proposals/README.md. Installed as soco-d2-precompute. Docs: docs/tools/precompute_proposals.md.
"""
import sys

import soco_d2  # noqa: F401  (compat shims before any detectron2 import)
from soco_d2.cli import run_cli, tool_parser
from soco_d2.proposals.cli import add_precompute_arguments, run_precompute


def build_parser():
    return add_precompute_arguments(tool_parser(__doc__, prog="precompute_proposals.py"))


def main(args) -> int:
    return run_precompute(args)


def cli(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(main, args)


if __name__ == "__main__":
    sys.exit(cli())
