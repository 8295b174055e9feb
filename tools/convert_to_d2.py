#!/usr/bin/env python
"""Convert a pretrained checkpoint into detectron2's model-zoo format (a .pkl
that any stock detectron2 config loads through MODEL.WEIGHTS), or into a
torchvision ResNet state dict.

inputs (detected automatically, or --format):
  soco_d2       our pretraining checkpoints (output/.../model_final.pth) and
                detectron2 detector checkpoints
  soco          official SoCo (module.encoder. / module.neck. / module.head.)
  densecl       DenseCL: extracted backbone {"state_dict", "author"} or the
                full OpenSelfSup training checkpoint
  moco          MoCo v1/v2 (module.encoder_q.)
  detcon_haiku  DetCon's released Haiku parameter tree (.npy; a pickle, read
                with a restricted unpickler: only dicts and numpy arrays)
  torchvision   a torchvision ResNet state dict
  d2            already in model-zoo names (e.g. to re-export to torchvision)

Only the online encoder is kept: momentum/target networks, queues and
projection/prediction heads are dropped and listed in the report. Every input
is read without running code in it (.pth: torch.load(weights_only=True);
.pkl/.npy: a restricted unpickler); --unsafe-load opts out for trusted files.

examples:
  %(prog)s output/demo/pretrain/soco_r50_fpn/model_final.pth model_final_d2.pkl --include backbone,fpn,box_head
  %(prog)s densecl_r50_imagenet_200ep.pth densecl_r50_d2.pkl --strict
  %(prog)s detcon_b_imagenet_r50.npy detcon_b_r50_d2.pkl --format detcon_haiku
  %(prog)s model_final_d2.pkl resnet50_torchvision.pth --to torchvision

then fine-tune with transfer_net.py --config-file configs/transfer/<config>.yaml MODEL.WEIGHTS <output.pkl>
(those configs already use STRIDE_IN_1X1 False, RGB input and the ImageNet mean/std x 255).
exit status: 0 ok, 2 the input cannot be converted (the message says why), 1 --verify-config found
missing keys. Installed as soco-d2-convert. Docs: docs/tools/convert_to_d2.md.
"""
import sys

import soco_d2  # noqa: F401  (compat shims before any detectron2 import)
from soco_d2.checkpoint.cli import add_convert_arguments, run_convert
from soco_d2.cli import run_cli, tool_parser


def build_parser():
    return add_convert_arguments(tool_parser(__doc__, prog="convert_to_d2.py", unsafe_load=True))


def main(args) -> int:
    return run_convert(args)


def cli(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(main, args)


if __name__ == "__main__":
    sys.exit(cli())
