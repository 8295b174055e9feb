#!/usr/bin/env python
"""Fine-tune and evaluate a detectron2 detector (Mask R-CNN / Faster R-CNN) from
pretrained weights, with detectron2's own evaluators.

    python tools/transfer_net.py --config-file configs/transfer/demo_mask_rcnn_R_50_FPN.yaml
    python tools/transfer_net.py --config-file ... --eval-only MODEL.WEIGHTS out/model_final.pth

Flags are detectron2's (--num-gpus, --num-machines, --machine-rank, --dist-url,
--resume, --eval-only, then KEY VALUE overrides).  Results go to
OUTPUT_DIR/results.json.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import soco_d2  # noqa: E402  (compat shims first)
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup  # noqa: E402

from soco_d2.engine import TransferTrainer, launch  # noqa: E402


def setup(args):
    cfg = get_cfg()
    soco_d2.add_pretrain_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = TransferTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return TransferTrainer.test(cfg, model)
    trainer = TransferTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args=(args,))
