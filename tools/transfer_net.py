#!/usr/bin/env python
"""Fine-tune and evaluate a detectron2 detector (Mask R-CNN / Faster R-CNN) from
pretrained weights, with detectron2's own evaluators (COCO, VOC, Cityscapes).

    # convert the pretraining checkpoint first (tools/convert_to_d2.py), then
    python tools/transfer_net.py --config-file configs/transfer/coco_mask_rcnn_R_50_FPN_1x.yaml \\
        --num-gpus 8 MODEL.WEIGHTS output/pretrain/soco_r50_fpn/model_final_d2.pkl
    python tools/transfer_net.py --config-file ... --eval-only MODEL.WEIGHTS out/model_final.pth
    # AP rows of several runs side by side (first minus second as a Δ row)
    python tools/transfer_net.py --compare out/soco/results.json out/random_init/results.json \\
        --labels SoCo "random init"

Flags are detectron2's (--num-gpus: processes per machine, GPUs or CPU
processes; --num-machines, --machine-rank, --dist-url, --resume, --eval-only,
then KEY VALUE overrides).  SyncBN in a config becomes naiveSyncBN on several
CPU processes and BN in one process (logged).  Results: OUTPUT_DIR/results.json
and OUTPUT_DIR/results.md (a markdown table to paste into a paper).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import soco_d2  # noqa: E402,F401  (compat shims first)
from detectron2.engine import default_argument_parser  # noqa: E402

from soco_d2.engine.transfer import add_transfer_arguments, run  # noqa: E402


def parse_args(argv=None):
    parser = default_argument_parser(epilog=__doc__)
    add_transfer_arguments(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    run(parse_args())
