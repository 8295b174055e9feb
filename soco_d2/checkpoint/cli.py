"""The work behind ``tools/convert_to_d2.py`` (``soco-d2-convert``): its arguments
(:func:`add_convert_arguments`, with the help texts) and :func:`run_convert`.

Errors are :class:`ConversionError` (an ``InputError``): the tool prints the
message and exits with status 2; ``--verify-config`` finding missing keys exits 1.
"""
from __future__ import annotations

import argparse
import json
import logging
import os

from .convert import GROUPS, convert_checkpoint, save_d2, save_torchvision
from .errors import ConversionError
from .formats import FORMATS


def add_convert_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The converter's own arguments (the shared ones come from ``soco_d2.cli.tool_parser``)."""
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
    parser.add_argument("--report", metavar="FILE.json", help="also write every key's fate as JSON")
    parser.add_argument(
        "--verify-config", metavar="CONFIG.yaml",
        help="after writing a .pkl, build this detectron2 config on CPU, load the .pkl through "
        "DetectionCheckpointer and fail if any included part has missing keys",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    return parser


def config_path(config_file: str) -> str:
    """``--verify-config``: a yaml file, or the name of a config shipped with soco_d2."""
    from ..model_zoo import get_config_file

    if os.path.isfile(config_file):
        return config_file
    try:
        return get_config_file(config_file)
    except FileNotFoundError as err:
        raise ConversionError(f"--verify-config: {err}") from None


def verify_against_config(pkl_path: str, config_file: str, include) -> dict:
    """``{group: missing keys}`` after loading ``pkl_path`` into ``config_file``'s model (built on CPU)."""
    from detectron2.modeling import build_model

    from ..config import get_pretrain_cfg
    from .loading import load_with_report, missing_by_group

    cfg = get_pretrain_cfg()
    cfg.merge_from_file(config_path(config_file))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg)
    # detectron2's per-key matching table repeats what the per-part summary says
    logging.getLogger("detectron2.checkpoint.c2_model_loading").setLevel(logging.WARNING)
    incompatible = load_with_report(model, pkl_path)
    missing = missing_by_group(incompatible, model)
    return {group: keys for group, keys in missing.items() if group in include}


def run_convert(args) -> int:
    """Convert ``args.input`` into ``args.output`` (and report / verify); returns the exit status."""
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    to = args.to or ("torchvision" if args.output.endswith((".pth", ".pt")) else "d2")
    if args.verify_config and to != "d2":
        raise ConversionError("--verify-config needs a detectron2 (.pkl) output")
    if args.verify_config:
        config_path(args.verify_config)  # fail before converting
    result = convert_checkpoint(
        args.input, fmt=args.format, include=args.include, strict=args.strict,
        depth=args.depth, unsafe=args.unsafe_load,
    )
    if not args.quiet:
        print(result.summary())
    (save_torchvision if to == "torchvision" else save_d2)(result, args.output)
    if not args.quiet:
        print(f"wrote {args.output} ({to}, {os.path.getsize(args.output) / 2**20:.1f} MiB)")
    if args.report:
        with open(args.report, "w") as f:
            json.dump(result.report(), f, indent=1)
    if args.verify_config:
        missing = verify_against_config(args.output, args.verify_config, result.include)
        for group, keys in missing.items():
            print(f"verify {args.verify_config}: {group}: {len(keys)} missing" + (f" (e.g. {keys[0]})" if keys else ""))
        if any(missing.values()):
            return 1
    return 0
