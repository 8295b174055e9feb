#!/usr/bin/env python
"""Self-supervised pretraining (SoCo, DetCon, DenseCL, BYOL, MoCo-v2) on detectron2.

examples:
  pretrain_net.py --config-file configs/demo/soco_r50_fpn.yaml OUTPUT_DIR output/demo/soco
  pretrain_net.py --config-file configs/soco_r50_fpn.yaml --num-gpus 8 OUTPUT_DIR output/soco_fpn
  pretrain_net.py --config-file ... --resume OUTPUT_DIR output/soco_fpn    # continue exactly
  torchrun --nproc_per_node 8 tools/pretrain_net.py --config-file ...     # any env:// launcher: joins it

Every input (config keys, dataset, proposal / mask caches, MODEL.WEIGHTS,
OUTPUT_DIR) is checked before anything is built; a problem ends the run with
one line saying what to do. SOLVER.EPOCHS / WARMUP_EPOCHS become iterations
from the dataset size; a SOLVER.MAX_ITER given on the command line wins.
Writes OUTPUT_DIR/{config.yaml, log.txt, metrics.json, events.out.tfevents.*,
model_*.pth, model_final.pth, last_checkpoint} and ends with a loss-curve
summary of the run. Installed as soco-d2-pretrain. Docs: docs/tools/pretrain_net.md.
"""
import sys

import soco_d2  # noqa: F401  (compat shims before any detectron2 import)
from soco_d2.cli import tool_parser
from soco_d2.engine import PretrainTrainer, launch_tool, prepare_pretrain, print_loss_summary, setup_run


def build_parser():
    return tool_parser(__doc__, prog="pretrain_net.py", config=True, launch=True, resume=True, overwrite=True,
                       unsafe_load=True)


def main(args, run=None):
    """One process of the run (``run``: the checked setup when it was made in this process)."""
    run = run or prepare_pretrain(args, check=False)
    cfg = setup_run(run.cfg, args, run.notes)
    trainer = PretrainTrainer(cfg, dataset_dicts=run.dataset_dicts, unsafe_load=args.unsafe_load,
                              progress=not args.no_progress)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    print_loss_summary(cfg)


def cli(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return launch_tool(main, args, prepare_pretrain)


if __name__ == "__main__":
    sys.exit(cli())
