#!/usr/bin/env python
"""Plot a run's metrics.json (pretraining or transfer): the loss curve and, when the probe
hook logged them, the probe accuracies over the iterations, as one PNG.

examples:
  plot_metrics.py output/demo/pretrain/soco_r50_fpn/metrics.json     # -> .../loss_curve.png
  plot_metrics.py output/soco_fpn --loss-keys total_loss loss_soco_12 --output soco_fpn.png

A run folder stands for its metrics.json. Rows are read as the trainers write them: a
resumed run's rows win, a row cut short by a killed run is skipped. Probe curves:
every probe/*_top1 value (e.g. probe/region_knn_top1). Exit status 2: no such file, or
nothing to plot. Installed as soco-d2-plot-metrics. Docs: docs/tools/plot_metrics.md.
"""
import os
import sys

import soco_d2  # noqa: F401  (compat shims first)
from soco_d2.cli import run_cli, tool_parser
from soco_d2.errors import InputError
from soco_d2.evaluation.plot import plot_metrics


def build_parser():
    parser = tool_parser(__doc__, prog="plot_metrics.py")
    parser.add_argument("metrics", metavar="METRICS_JSON", help="a metrics.json, or the run folder holding one")
    parser.add_argument("--output", default=None, help="PNG to write (default: loss_curve.png next to metrics.json)")
    parser.add_argument("--loss-keys", nargs="+", default=["total_loss"], metavar="KEY",
                        help="metrics drawn in the loss panel (default: total_loss)")
    return parser


def main(args) -> int:
    path = os.path.join(args.metrics, "metrics.json") if os.path.isdir(args.metrics) else args.metrics
    if not os.path.isfile(path):
        raise InputError(f"{args.metrics!r}: no such metrics.json")
    try:
        png = plot_metrics(path, args.output, loss_keys=tuple(args.loss_keys))
    except ValueError as err:
        raise InputError(str(err)) from None
    print(f"wrote {png}")
    return 0


def cli(argv=None) -> int:
    return run_cli(main, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
