#!/usr/bin/env python
"""Precompute selective-search boxes (SoCo) or Felzenszwalb label maps (DetCon)
for a whole dataset into one memory-mapped cache file.

Examples:
  # boxes for the demo photos with the default (fast) preset, 2 processes
  python tools/precompute_proposals.py --dataset demo_images --method selective_search \\
      --output proposals/demo_images_ss.pcache --workers 2
  # DetCon masks of ImageNet on 16 machines (run each shard anywhere), then merge
  python tools/precompute_proposals.py --dataset imagenet_train --method felzenszwalb \\
      --output proposals/imagenet_fh.pcache --workers 16 --num-shards 16 --shard-id $I
  python tools/precompute_proposals.py --merge --output proposals/imagenet_fh.pcache
  # the official SoCo tool's exact settings, and its JSON format
  python tools/precompute_proposals.py --image-dir /data/imgs --method selective_search --preset paper \\
      --output ss_paper.pcache --export-json ss_paper.json

A killed run resumes when rerun with the same arguments (finished chunks are
kept in OUTPUT.parts/); the final file is byte-identical to an uninterrupted
run's.  Unreadable images are skipped with a reason (listed in the summary and
the cache header); they never stop the run.  The format is described in
proposals/README.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import soco_d2  # noqa: E402,F401  (compat shims before detectron2)

from soco_d2.proposals.filters import STAGES, FilterPolicy, parse_official_strategy  # noqa: E402
from soco_d2.proposals.presets import DEFAULT_PRESET, PAPER_FILTER, PRESETS, get_preset  # noqa: E402

logger = logging.getLogger("soco_d2.proposals")


def pixel_count(text: str) -> int:
    """A whole number written as 250000000, 250_000_000 or 250e6."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 250e6)") from None
    if value < 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number >= 0")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="precompute_proposals.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_argument_group("input (one of)")
    src.add_argument("--dataset", metavar="NAME",
                     help="a registered pretraining dataset (soco_d2.data.get_pretrain_dicts: demo_images, "
                          "imagenet_train, imagenet_val, coco_2017_train_images, coco_2017_unlabeled_images, "
                          "folder:/path, or a labeled detectron2 dataset); keys are its image_id")
    src.add_argument("--image-dir", metavar="DIR",
                     help="a folder of images (recursive); image_id = relative path without extension, as "
                          "soco_d2.data.load_image_folder(DIR)")
    src.add_argument("--source", metavar="LABEL",
                     help="label of the input stored in the header (default: the --dataset name or the absolute "
                          "--image-dir); shards must agree on it to be merged")
    src.add_argument("--limit", type=int, default=0, metavar="N",
                     help="only the first N images in image_id order (a quick trial; 0 = all)")

    m = p.add_argument_group("method and backend")
    m.add_argument("--method", choices=sorted(PRESETS), help="selective_search (boxes, SoCo) or felzenszwalb (label maps, DetCon)")
    m.add_argument("--preset", metavar="NAME",
                   help="named settings; selective_search: " + ", ".join(PRESETS["selective_search"])
                        + f" (default {DEFAULT_PRESET['selective_search']}); felzenszwalb: "
                        + ", ".join(PRESETS["felzenszwalb"]) + f" (default {DEFAULT_PRESET['felzenszwalb']}). "
                        "'paper' = the official tools' settings. See --list-presets")
    m.add_argument("--list-presets", action="store_true", help="print every preset's settings and exit")
    m.add_argument("--backend", choices=["opencv_ss", "selectivesearch", "skimage_fh", "opencv_fh"],
                   help="override the preset's backend: opencv_ss (OpenCV ximgproc selective search), selectivesearch "
                        "(the PyPI package, official SoCo behaviour), skimage_fh (scikit-image felzenszwalb, DetCon), "
                        "opencv_fh (OpenCV graph segmentation)")
    m.add_argument("--mode", choices=["fast", "quality", "single", "custom"],
                   help="opencv_ss mode: OpenCV's fast / quality presets, single strategy, or custom")
    m.add_argument("--max-side", type=int, metavar="PX",
                   help="downscale so the longer side is at most PX before segmenting (0 = full resolution); boxes "
                        "are mapped back to original pixels, label maps are stored at this size")
    m.add_argument("--scale-params", dest="scale_params", action="store_true", default=None,
                   help="scale k/scale and min_size by s^2 and sigma by s with the resize factor s")
    m.add_argument("--no-scale-params", dest="scale_params", action="store_false",
                   help="use the parameters as given on the downscaled image")
    m.add_argument("--scale", "--k", dest="scale", type=float, metavar="K",
                   help="Felzenszwalb scale / OpenCV k (selectivesearch, skimage_fh, opencv_fh: scale; opencv_ss: k, "
                        "the first k of fast/quality)")
    m.add_argument("--sigma", type=float, help="Gaussian smoothing sigma of the graph segmentation")
    m.add_argument("--min-size", type=int, metavar="PX", help="minimum segment size in pixels (opencv_ss: single/custom only)")
    m.add_argument("--inc-k", type=int, help="opencv_ss: k increment between graph segmentations")
    m.add_argument("--num-k", type=int, help="opencv_ss custom: number of graph segmentations (k, k+inc_k, ...)")
    m.add_argument("--color-spaces", metavar="LIST",
                   help="opencv_ss custom: comma-separated colour spaces of hsv, lab, rgb, gray, hue, rgi")
    m.add_argument("--strategies", metavar="LIST",
                   help="opencv_ss custom: comma-separated strategies, each combining letters c(olour) f(ill) "
                        "t(exture) s(ize), e.g. cfts,fts")

    f = p.add_argument_group("SoCo box filter (selective_search)")
    f.add_argument("--filter", metavar="NAME",
                   help=f"official filter strategy name (default {PAPER_FILTER}: min side 32, aspect <= 3, "
                        "sqrt-area ratio in [0.3, 0.8], 'post' = aspect-only then min-side-only fallbacks), "
                        "'ratio3', 'size03', 'none', or 'raw' (store every proposal)")
    f.add_argument("--min-box-side", type=int, metavar="PX", help="override: both box sides >= PX (0 = off)")
    f.add_argument("--max-aspect", type=float, metavar="R", help="override: 1/R <= w/h <= R (0 = off)")
    f.add_argument("--min-size-ratio", type=float, help="override: sqrt(w*h)/sqrt(W*H) >= this (0 = off)")
    f.add_argument("--max-size-ratio", type=float, help="override: sqrt(w*h)/sqrt(W*H) <= this (0 = off)")
    f.add_argument("--fallbacks", metavar="LIST",
                   help="stages tried in order when the filter keeps nothing, comma-separated from "
                        f"{', '.join(s for s in STAGES if s != 'main')} ('' = none; default ratio,none,whole_image)")
    f.add_argument("--size-convention", choices=["official", "extent"],
                   help="box width for the rules: official (x2 - x1 - 1, as the official rects; default) or extent (x2 - x1)")
    f.add_argument("--max-boxes", type=int, metavar="N", help="keep at most N boxes per image (backend order; 0 = all)")
    f.add_argument("--dedup", action="store_true", help="drop exact duplicate boxes")

    k = p.add_argument_group("masks (felzenszwalb)")
    k.add_argument("--mask-max-side", type=int, metavar="PX",
                   help="store label maps with the longer side at most PX (nearest neighbour; 0 = as segmented)")

    i = p.add_argument_group("images")
    i.add_argument("--min-image-side", type=int, metavar="PX",
                   help="images with a side below PX are not segmented: whole-image box / one segment (default 8)")
    i.add_argument("--max-pixels", type=pixel_count, metavar="N",
                   help="skip images with more pixels, before decoding (default 250e6; 5e6 or 5000000)")
    i.add_argument("--allow-truncated", action="store_true",
                   help="decode truncated files (the missing part is grey) instead of skipping them")

    r = p.add_argument_group("run")
    r.add_argument("--output", metavar="PATH", help="the cache file (shards: PATH with .shard-IIIII-of-SSSSS before the extension)")
    r.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes (default 1; 0 = in this process). Each uses one core")
    r.add_argument("--chunk-size", type=int, default=64, metavar="N",
                   help="images per committed chunk (what a restart may redo; default 64)")
    r.add_argument("--num-shards", type=int, default=1, metavar="S", help="split the dataset into S shards (default 1)")
    r.add_argument("--shard-id", type=int, default=0, metavar="I", help="the shard this run computes, 0..S-1")
    r.add_argument("--merge", action="store_true",
                   help="join the finished shards of --output (found by name) into --output, then exit")
    r.add_argument("--overwrite", action="store_true",
                   help="replace an existing output made with other settings or images, and discard an interrupted "
                        "run made with other settings (an output that is complete with the same settings is kept)")
    r.add_argument("--verify", metavar="PATH",
                   help="check every byte of the cache PATH (checksums, decoding, index) and exit (1 if damaged)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--summary-json", metavar="PATH", help="also write the run summary as JSON")

    j = p.add_argument_group("official SoCo JSON")
    j.add_argument("--import-json", metavar="JSON",
                   help="convert an official proposal JSON into the cache at --output (needs --dataset/--image-dir "
                        "for the image sizes and ids), instead of computing")
    j.add_argument("--export-json", metavar="JSON", help="write the box cache at --output as official SoCo JSON")
    j.add_argument("--json-keys", choices=["basename", "image_id"], default="basename",
                   help="keys of the exported JSON: the official basename (default) or our image_id")
    return p


def dataset_items(args, parser):
    from soco_d2.data import get_pretrain_dicts, load_image_folder

    try:
        if args.dataset:
            dicts = get_pretrain_dicts(args.dataset)
            label = args.dataset
        else:
            dicts = load_image_folder(args.image_dir)
            label = os.path.abspath(args.image_dir)
    except (KeyError, FileNotFoundError) as e:
        parser.error(str(e.args[0] if isinstance(e, KeyError) and e.args else e))
    dicts = sorted(dicts, key=lambda d: str(d["image_id"]).encode("utf-8"))
    if args.limit:
        dicts = dicts[: args.limit]
    return dicts, {"dataset": args.source or label, "dataset_images": len(dicts)}


def spec_from_args(args):
    params = {}
    names = {"selectivesearch": "scale", "skimage_fh": "scale", "opencv_fh": "scale", "opencv_ss": "k"}
    backend = args.backend or PRESETS[args.method][args.preset or DEFAULT_PRESET[args.method]]["backend"]
    if args.scale is not None:
        v = args.scale
        params[names.get(backend, "scale")] = int(v) if backend == "opencv_ss" else v
    for name in ("sigma", "min_size", "inc_k", "num_k", "mode"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    if args.color_spaces is not None:
        params["color_spaces"] = [s.strip() for s in args.color_spaces.split(",") if s.strip()]
    if args.strategies is not None:
        params["strategies"] = [s.strip() for s in args.strategies.split(",") if s.strip()]
    overrides = dict(backend=args.backend, max_side=args.max_side, scale_params=args.scale_params,
                     mask_max_side=args.mask_max_side, min_image_side=args.min_image_side,
                     max_pixels=args.max_pixels, allow_truncated=args.allow_truncated or None)
    if args.method == "selective_search":
        policy = parse_official_strategy(args.filter or PAPER_FILTER)
        d = policy.to_dict()
        for flag, key in (("min_box_side", "min_side"), ("max_aspect", "max_aspect"), ("min_size_ratio", "min_size_ratio"),
                          ("max_size_ratio", "max_size_ratio"), ("size_convention", "size_convention"),
                          ("max_boxes", "max_boxes")):
            if getattr(args, flag) is not None:
                d[key] = getattr(args, flag)
        if args.fallbacks is not None:
            d["fallbacks"] = [s.strip() for s in args.fallbacks.split(",") if s.strip()]
        if args.dedup:
            d["dedup"] = True
        overrides["filter"] = FilterPolicy.from_dict(d)
    elif any(getattr(args, a) is not None for a in ("filter", "fallbacks", "max_boxes", "min_box_side")):
        raise ValueError("box filter flags (--filter, --fallbacks, ...) only apply to --method selective_search")
    return get_preset(args.method, args.preset, params=params, **overrides)


def list_presets():
    for method, presets in PRESETS.items():
        print(f"{method} (default: {DEFAULT_PRESET[method]})")
        for name in presets:
            spec = get_preset(method, name)
            print(f"  {name}: backend={spec.backend} params={spec.params} max_side={spec.max_side or 'full'} "
                  f"scale_params={spec.scale_params}" + (f" filter={PAPER_FILTER}+whole_image" if spec.kind == "boxes" else ""))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.list_presets:
        list_presets()
        return 0
    if args.verify:
        from soco_d2.proposals.verify import format_verify_report, verify_cache

        report = verify_cache(args.verify, progress=not args.no_progress)
        print(format_verify_report(report))
        return 0 if report["ok"] else 1
    if not args.output:
        parser.error("--output PATH is required")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if args.chunk_size < 1:
        parser.error(f"--chunk-size must be >= 1, got {args.chunk_size}")
    if args.num_shards < 1:
        parser.error(f"--num-shards must be >= 1, got {args.num_shards}")
    if not 0 <= args.shard_id < args.num_shards:
        parser.error(f"--shard-id must be in [0, {args.num_shards - 1}] for --num-shards {args.num_shards}, got {args.shard_id}")

    from soco_d2.proposals.cache import merge_caches
    from soco_d2.proposals.official import export_official_json, import_official_json
    from soco_d2.proposals.precompute import find_shards, format_summary, precompute, summarize

    if args.merge:
        if args.dataset or args.image_dir or args.import_json:
            parser.error("--merge takes only --output (the shards are found next to it)")
        try:
            shards = find_shards(args.output)
            if os.path.exists(args.output) and not args.overwrite:
                parser.error(f"{args.output} exists; pass --overwrite to replace it")
            merge_caches(shards, args.output)
        except (FileNotFoundError, ValueError) as e:
            parser.error(str(e))
        logger.info("merged %d shards", len(shards))
        print(format_summary(summarize(args.output)))
        return 0

    if args.export_json and not (args.dataset or args.image_dir or args.import_json):
        if not os.path.exists(args.output):
            parser.error(f"--export-json: {args.output} does not exist")
        n = export_official_json(args.output, args.export_json, args.json_keys)
        logger.info("exported %d images to %s", n, args.export_json)
        return 0

    if bool(args.dataset) == bool(args.image_dir):
        parser.error("give exactly one of --dataset NAME or --image-dir DIR")
    if args.import_json:
        dicts, source = dataset_items(args, parser)
        if os.path.exists(args.output) and not args.overwrite:
            parser.error(f"{args.output} exists; pass --overwrite to replace it")
        try:
            counts = import_official_json(args.import_json, dicts, args.output, source)
        except ValueError as e:
            logger.error("error: %s", e)
            return 1
        logger.info("imported %s into %s: %s", args.import_json, args.output, counts)
        if args.export_json:
            export_official_json(args.output, args.export_json, args.json_keys)
        return 0
    if not args.method:
        parser.error("--method selective_search|felzenszwalb is required")
    if args.preset and args.preset not in PRESETS[args.method]:
        parser.error(f"unknown {args.method} preset {args.preset!r}; choose from {', '.join(PRESETS[args.method])}")
    try:
        spec = spec_from_args(args)
    except (ValueError, KeyError, TypeError) as e:
        parser.error(str(e))
    if args.mask_max_side is not None and spec.kind != "masks":
        parser.error("--mask-max-side only applies to --method felzenszwalb")
    if args.export_json and spec.kind != "boxes":
        parser.error("--export-json needs --method selective_search (label maps have no JSON form)")
    dicts, source = dataset_items(args, parser)
    logger.info(
        "%s for %d images%s: preset %s, backend %s %s, max side %s, %d worker(s) -> %s",
        spec.kind, len(dicts), f" (shard {args.shard_id} of {args.num_shards})" if args.num_shards > 1 else "",
        spec.preset, spec.backend, spec.params, spec.max_side or "full", args.workers, args.output,
    )
    try:
        summary = precompute([(d["image_id"], d["file_name"]) for d in dicts], spec, args.output, source=source,
                             workers=args.workers, chunk_size=args.chunk_size, num_shards=args.num_shards,
                             shard_id=args.shard_id, overwrite=args.overwrite, progress=not args.no_progress)
    except (FileExistsError, ValueError) as e:
        logger.error("error: %s", e)
        return 1
    except KeyboardInterrupt:
        logger.error("interrupted; rerun the same command to resume")
        return 130
    print(format_summary(summary))
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=1, sort_keys=True)
    if args.export_json:
        if args.num_shards > 1:
            logger.warning("--export-json skipped for a shard; merge first, then export")
        else:
            n = export_official_json(args.output, args.export_json, args.json_keys)
            logger.info("exported %d images to %s", n, args.export_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
