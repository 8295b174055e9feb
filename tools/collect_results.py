#!/usr/bin/env python
"""Collect the results of many runs into one markdown table, one CSV and an AP bar plot.

    python tools/collect_results.py output/transfer/*            # run folders (results.json, probe_results.json)
    python tools/collect_results.py output/ --out results/         # every result file below output/

Runs with the same weights, protocol (the config minus seed, output folder,
weights and device; soco_d2.engine.results.protocol_of) and dataset are
repeats: their row shows mean ± sample standard deviation and the seeds
(SEED, and /foldN for a semi-supervised subset's seed).  Runs whose
results.json predates the protocol record are listed one by one.

Writes OUT/results.md (also printed), OUT/results.csv (mean and _std columns,
full precision) and OUT/ap_by_method.png (APbb and APmk per method, one panel
per protocol and dataset, std as error bars).

Installed as soco-d2-collect-results. Docs: docs/tools/collect_results.md.
"""
import os
import sys

import soco_d2  # noqa: F401  (compat shims first)
from soco_d2.cli import run_cli, tool_parser
from soco_d2.engine.collect import (
    collect_results,
    collected_markdown,
    plot_ap_by_method,
    write_collected_csv,
)


def build_parser():
    parser = tool_parser(__doc__, prog="collect_results.py")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run folders or result files; a folder without its own results is searched recursively")
    parser.add_argument("--out", default="collected_results", help="folder for results.md, results.csv, ap_by_method.png")
    return parser


def main(args) -> int:
    groups = collect_results(args.runs)
    os.makedirs(args.out, exist_ok=True)
    table = collected_markdown(groups)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    write_collected_csv(groups, os.path.join(args.out, "results.csv"))
    plot = plot_ap_by_method(groups, os.path.join(args.out, "ap_by_method.png"))
    print(table)
    runs = sum(len(g.runs) for g in groups)
    print(f"\n{runs} results from {len(groups)} groups -> {args.out}/results.md, results.csv"
          + (", ap_by_method.png" if plot else " (no AP to plot)"))
    return 0


def cli(argv=None) -> int:
    return run_cli(main, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
