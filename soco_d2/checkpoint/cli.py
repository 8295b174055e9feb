"""``tools/convert_to_d2.py``: command-line front end of :mod:`soco_d2.checkpoint`."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .convert import FINE_TUNE_HINT, GROUPS, convert_checkpoint, save_d2, save_torchvision
from .errors import ConversionError
from .formats import FORMATS

DESCRIPTION = """\
Convert a pretrained checkpoint into detectron2's model-zoo format (a .pkl
that any stock detectron2 config loads through MODEL.WEIGHTS), or into a
torchvision ResNet state dict.

Inputs (detected automatically, or --format):
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
projection/prediction heads are dropped and listed in the report.
"""

EPILOG = f"""\
examples:
  %(prog)s output/demo/pretrain/soco_r50_fpn/model_final.pth output/demo/pretrain/soco_r50_fpn/model_final_d2.pkl \\
      --include backbone,fpn,box_head
  %(prog)s densecl_r50_imagenet_200ep.pth densecl_r50_d2.pkl --strict
  %(prog)s detcon_b_imagenet_r50.npy detcon_b_r50_d2.pkl --format detcon_haiku
  %(prog)s model_final_d2.pkl resnet50_torchvision.pth --to torchvision

then fine-tune with tools/transfer_net.py --config-file configs/transfer/<config>.yaml MODEL.WEIGHTS <output.pkl>.
The configs there already use {FINE_TUNE_HINT}.
exit status: 0 ok, 2 the input cannot be converted (message says why), 1 --verify-config found missing keys.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_to_d2.py", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", help="checkpoint to convert (.pth, .pkl, .npy, ...)")
    parser.add_argument("output", help="output file: .pkl for detectron2, .pth for torchvision")
    parser.add_argument("--format", default="auto", choices=("auto",) + FORMATS, help="input layout (default: detect)")
    parser.add_argument(
        "--include", default="backbone",
        help=f"comma-separated parts to keep, from {','.join(GROUPS)}, or all (every part the checkpoint "
        "has; default: backbone). SoCo FPN checkpoints: backbone,fpn,box_head. A C4 region head's res5 "
        "is part of the backbone.",
    )
    parser.add_argument("--to", choices=("d2", "torchvision"), default=None,
                        help="output format (default: torchvision for .pth/.pt outputs, else d2)")
    parser.add_argument("--strict", action="store_true", help="fail if any key of the input matches no rule")
    parser.add_argument("--depth", type=int, default=None, help="fail unless the ResNet has this depth")
    parser.add_argument("--unsafe-load", action="store_true",
                        help="load with plain pickle / torch.load(weights_only=False): only for files you trust")
    parser.add_argument("--report", metavar="FILE.json", help="also write every key's fate as JSON")
    parser.add_argument(
        "--verify-config", metavar="CONFIG.yaml",
        help="after writing a .pkl, build this detectron2 config on CPU, load the .pkl through "
        "DetectionCheckpointer and fail if any included part has missing keys",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    return parser


def verify_against_config(pkl_path: str, config_file: str, include) -> dict:
    """``{group: missing keys}`` after loading ``pkl_path`` into ``config_file``'s model (built on CPU)."""
    from detectron2.modeling import build_model

    from ..config import get_pretrain_cfg
    from .loading import load_with_report, missing_by_group

    cfg = get_pretrain_cfg()
    cfg.merge_from_file(config_file)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg)
    # detectron2's per-key matching table repeats what the per-part summary says
    logging.getLogger("detectron2.checkpoint.c2_model_loading").setLevel(logging.WARNING)
    incompatible = load_with_report(model, pkl_path)
    missing = missing_by_group(incompatible, model)
    return {group: keys for group, keys in missing.items() if group in include}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    to = args.to or ("torchvision" if args.output.endswith((".pth", ".pt")) else "d2")
    try:
        result = convert_checkpoint(
            args.input, fmt=args.format, include=args.include, strict=args.strict,
            depth=args.depth, unsafe=args.unsafe_load,
        )
        if not args.quiet:
            print(result.summary())
        (save_torchvision if to == "torchvision" else save_d2)(result, args.output)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"wrote {args.output} ({to}, {os.path.getsize(args.output) / 2**20:.1f} MiB)")
    if args.report:
        with open(args.report, "w") as f:
            json.dump(result.report(), f, indent=1)
    if args.verify_config:
        if to != "d2":
            print("error: --verify-config needs a detectron2 (.pkl) output", file=sys.stderr)
            return 2
        missing = verify_against_config(args.output, args.verify_config, result.include)
        bad = {g: keys for g, keys in missing.items() if keys}
        for group, keys in missing.items():
            print(f"verify {args.verify_config}: {group}: {len(keys)} missing" + (f" (e.g. {keys[0]})" if keys else ""))
        if bad:
            return 1
    return 0
