#!/usr/bin/env python
"""Fine-tune and evaluate a detectron2 detector (Mask R-CNN / Faster R-CNN) from
pretrained weights, with detectron2's own evaluators (COCO, VOC, Cityscapes).

examples:
  # convert the pretraining checkpoint first (convert_to_d2.py), then
  transfer_net.py --config-file configs/transfer/coco_mask_rcnn_R_50_FPN_1x.yaml --num-gpus 8 \\
      MODEL.WEIGHTS output/soco_fpn/model_final_d2.pkl OUTPUT_DIR output/transfer/soco_coco_1x
  transfer_net.py --config-file ... --eval-only MODEL.WEIGHTS output/transfer/soco_coco_1x/model_final.pth
  # AP rows of several runs side by side (first minus second as a delta row)
  transfer_net.py --compare output/transfer/soco_coco_1x output/transfer/scratch --labels SoCo "random init"
  # ... with the probe accuracies of the weights each run started from (probe_net.py) as more columns
  transfer_net.py --compare RUN_A RUN_B --probes PROBE_A PROBE_B

Inputs (config keys, datasets, MODEL.WEIGHTS, OUTPUT_DIR) are checked before
anything is built. SyncBN in a config becomes naiveSyncBN on several CPU
processes and BN in one process (logged). Results: OUTPUT_DIR/results.json and
results.md. Installed as soco-d2-transfer. Docs: docs/tools/transfer_net.md.
"""
import sys

import soco_d2  # noqa: F401  (compat shims before any detectron2 import)
from soco_d2.cli import run_cli, tool_parser
from soco_d2.engine import compare_results, launch_tool, prepare_transfer, run_transfer
from soco_d2.errors import InputError


def build_parser():
    parser = tool_parser(__doc__, prog="transfer_net.py", config=True, launch=True, resume=True, overwrite=True,
                         eval_only=True, unsafe_load=True)
    parser.add_argument("--compare", nargs="+", metavar="RESULTS",
                        help="print the AP rows of these results.json files (or run folders) side by side and exit")
    parser.add_argument("--labels", nargs="+", help="row labels for --compare (default: the weights of each run)")
    parser.add_argument("--probes", nargs="+", metavar="PROBE_RESULTS",
                        help="with --compare: one probe_results.json (or probe_net.py folder) per row, its probe "
                        "accuracies added as columns")
    return parser


def main(args, run=None):
    """One process of the run (``run``: the checked setup when it was made in this process)."""
    return run_transfer(args, run)


def compare(args):
    try:
        print(compare_results(args.compare, args.labels, args.probes))
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"--compare: {err}") from None


def cli(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.compare:
        return run_cli(compare, args)
    return launch_tool(main, args, prepare_transfer)


if __name__ == "__main__":
    sys.exit(cli())
