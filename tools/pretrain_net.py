#!/usr/bin/env python
"""Self-supervised pretraining (SoCo, DetCon, DenseCL, BYOL, MoCo-v2) with detectron2.

    python tools/pretrain_net.py --config-file configs/demo/soco_r50_fpn.yaml
    python tools/pretrain_net.py --config-file configs/soco_r50_fpn.yaml --num-gpus 8 \\
        OUTPUT_DIR output/soco_fpn SOLVER.MAX_ITER 1000
    python tools/pretrain_net.py --config-file ... --resume     # continue OUTPUT_DIR exactly

Flags are detectron2's: ``--config-file``, ``--resume`` (continue from
OUTPUT_DIR/last_checkpoint: weights, momentum encoder, queues, optimizer,
lr scheduler, iteration and data position), ``--num-gpus`` (processes per
machine; CPU processes under gloo when there is no GPU), ``--num-machines``,
``--machine-rank``, ``--dist-url`` (tcp://HOST:PORT of machine 0; "auto" on one
machine), then ``KEY VALUE`` config overrides.  ``SOLVER.EPOCHS`` /
``WARMUP_EPOCHS`` are turned into iterations from the dataset size; a
``SOLVER.MAX_ITER`` given here on the command line wins over ``EPOCHS``.

Writes OUTPUT_DIR/{config.yaml, log.txt, metrics.json, events.out.tfevents.*,
model_*.pth, model_final.pth, last_checkpoint} and ends with a loss-curve
summary (first / last / min total_loss).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import soco_d2  # noqa: E402,F401  (compat shims first)
import torch  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from soco_d2.engine import PretrainTrainer, launch, setup_pretrain_cfg  # noqa: E402
from soco_d2.engine.pretrain import format_loss_summary, loss_curve_summary, merged_cfg  # noqa: E402


def main(args):
    cfg = setup_pretrain_cfg(args)
    trainer = PretrainTrainer(cfg, unsafe_load=args.unsafe_load)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    metrics = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
    if comm.is_main_process() and os.path.isfile(metrics):
        print(format_loss_summary(loss_curve_summary(metrics)), flush=True)


HELP = {
    "resume": "continue from OUTPUT_DIR/last_checkpoint exactly (model incl. momentum encoder and queues, "
    "optimizer, lr scheduler, iteration, data position); without it, start at iteration 0 from MODEL.WEIGHTS",
    "num_gpus": "processes per machine: one per GPU, or gloo CPU processes when CUDA is unavailable",
    "eval_only": argparse.SUPPRESS,  # pretraining has no evaluation
}


def parser() -> argparse.ArgumentParser:
    p = default_argument_parser(epilog=__doc__.split("\n\n", 1)[1])
    p.description = __doc__.split("\n\n", 1)[0]
    for action in p._actions:
        action.help = HELP.get(action.dest, action.help)
    p.add_argument("--unsafe-load", action="store_true",
                   help="read MODEL.WEIGHTS / checkpoints with plain pickle / torch.load(weights_only=False): "
                   "runs any code the file holds, only for files you trust")
    return p


if __name__ == "__main__":
    args = parser().parse_args()
    if args.eval_only:
        sys.exit("pretrain_net.py has no --eval-only: pretraining has no evaluation (use tools/transfer_net.py)")
    # MODEL.DEVICE cpu on a GPU machine still needs gloo CPU workers
    use_cuda = torch.cuda.is_available() and str(merged_cfg(args).MODEL.DEVICE).startswith("cuda")
    launch(main, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args=(args,), use_cuda=use_cuda)
