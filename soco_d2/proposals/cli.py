"""The work behind ``tools/precompute_proposals.py`` (``soco-d2-precompute``): its
arguments (:func:`add_precompute_arguments`, with the help texts) and
:func:`run_precompute`.  A bad argument raises :class:`soco_d2.errors.InputError`
(the tool prints it and exits with status 2)."""
from __future__ import annotations

import argparse
import json
import logging
import os

from ..data.datasets import get_pretrain_dicts, load_image_folder
from ..errors import InputError
from .cache import merge_caches
from .filters import STAGES, FilterPolicy, parse_official_strategy
from .official import export_official_json, import_official_json
from .precompute import find_shards, format_summary, precompute, summarize
from .presets import DEFAULT_PRESET, PAPER_FILTER, PRESETS, get_preset

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


def add_precompute_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The precompute tool's own arguments (``--no-progress`` / ``--debug`` come from ``soco_d2.cli``)."""
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
    r.add_argument("--summary-json", metavar="PATH", help="also write the run summary as JSON")

    j = p.add_argument_group("official SoCo JSON")
    j.add_argument("--import-json", metavar="JSON",
                   help="convert an official proposal JSON into the cache at --output (needs --dataset/--image-dir "
                        "for the image sizes and ids), instead of computing")
    j.add_argument("--export-json", metavar="JSON", help="write the box cache at --output as official SoCo JSON")
    j.add_argument("--json-keys", choices=["basename", "image_id"], default="basename",
                   help="keys of the exported JSON: the official basename (default) or our image_id")
    return p


def dataset_items(args):
    """The images to process, sorted by image_id bytes, and the header's ``source``."""
    try:
        if args.dataset:
            dicts = get_pretrain_dicts(args.dataset)
            label = args.dataset
        else:
            dicts = load_image_folder(args.image_dir)
            label = os.path.abspath(args.image_dir)
    except (KeyError, FileNotFoundError) as e:
        raise InputError(str(e.args[0] if isinstance(e, KeyError) and e.args else e)) from None
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


def run_precompute(args) -> int:
    """The whole tool after parsing: list presets, merge shards, export / import JSON or compute."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.list_presets:
        list_presets()
        return 0
    if args.verify:
        from .verify import format_verify_report, verify_cache

        report = verify_cache(args.verify, progress=not args.no_progress)
        print(format_verify_report(report))
        return 0 if report["ok"] else 1
    if not args.output:
        raise InputError("--output PATH is required")
    if args.workers < 0:
        raise InputError(f"--workers must be >= 0, got {args.workers}")
    if args.chunk_size < 1:
        raise InputError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    if args.num_shards < 1:
        raise InputError(f"--num-shards must be >= 1, got {args.num_shards}")
    if not 0 <= args.shard_id < args.num_shards:
        raise InputError(f"--shard-id must be in [0, {args.num_shards - 1}] for --num-shards {args.num_shards}, got {args.shard_id}")

    if args.merge:
        if args.dataset or args.image_dir or args.import_json:
            raise InputError("--merge takes only --output (the shards are found next to it)")
        try:
            shards = find_shards(args.output)
            if os.path.exists(args.output) and not args.overwrite:
                raise InputError(f"{args.output} exists; pass --overwrite to replace it")
            merge_caches(shards, args.output)
        except (FileNotFoundError, ValueError) as e:
            raise InputError(str(e))
        logger.info("merged %d shards", len(shards))
        print(format_summary(summarize(args.output)))
        return 0

    if args.export_json and not (args.dataset or args.image_dir or args.import_json):
        if not os.path.exists(args.output):
            raise InputError(f"--export-json: {args.output} does not exist")
        n = export_official_json(args.output, args.export_json, args.json_keys)
        logger.info("exported %d images to %s", n, args.export_json)
        return 0

    if bool(args.dataset) == bool(args.image_dir):
        raise InputError("give exactly one of --dataset NAME or --image-dir DIR")
    if args.import_json:
        dicts, source = dataset_items(args)
        if os.path.exists(args.output) and not args.overwrite:
            raise InputError(f"{args.output} exists; pass --overwrite to replace it")
        try:
            counts = import_official_json(args.import_json, dicts, args.output, source)
        except ValueError as e:  # the JSON does not fit the dataset: nothing was written
            raise InputError(str(e)) from None
        logger.info("imported %s into %s: %s", args.import_json, args.output, counts)
        if args.export_json:
            export_official_json(args.output, args.export_json, args.json_keys)
        return 0
    if not args.method:
        raise InputError("--method selective_search|felzenszwalb is required")
    if args.preset and args.preset not in PRESETS[args.method]:
        raise InputError(f"unknown {args.method} preset {args.preset!r}; choose from {', '.join(PRESETS[args.method])}")
    try:
        spec = spec_from_args(args)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(str(e))
    if args.mask_max_side is not None and spec.kind != "masks":
        raise InputError("--mask-max-side only applies to --method felzenszwalb")
    if args.export_json and spec.kind != "boxes":
        raise InputError("--export-json needs --method selective_search (label maps have no JSON form)")
    dicts, source = dataset_items(args)
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


# --------------------------------------------------------------------------- visualize_proposals.py


def add_visualize_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The visualiser's own arguments."""
    p.add_argument("--cache", required=True, metavar="PATH", help="a cache written by tools/precompute_proposals.py")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", metavar="NAME", help="the registered dataset the cache was made from (to find the image files)")
    src.add_argument("--image-dir", metavar="DIR", help="the image folder the cache was made from")
    p.add_argument("--images", nargs="+", metavar="ID", help="image_ids to draw (default: the first --num of the cache)")
    p.add_argument("--num", type=int, default=4, help="how many images when --images is not given (default 4)")
    p.add_argument("--max-boxes", type=int, default=50, help="boxes drawn per image, in cache order (default 50)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the segment colours (default 0.5)")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="where the PNGs go (created)")
    return p


def run_visualize(args) -> int:
    """Draw the cached boxes / label maps of a few images onto the photos, as PNGs."""
    from PIL import Image

    from .cache import ProposalCache
    from ..imageio import read_rgb
    from .visualize import draw_boxes, draw_mask

    if not os.path.isfile(args.cache):
        raise InputError(f"no cache file {args.cache!r}")
    try:
        dicts = get_pretrain_dicts(args.dataset) if args.dataset else load_image_folder(args.image_dir)
    except (KeyError, FileNotFoundError) as e:
        raise InputError(str(e.args[0] if isinstance(e, KeyError) and e.args else e)) from None
    files = {str(d["image_id"]): d["file_name"] for d in dicts}
    cache = ProposalCache(args.cache)
    ids = args.images or cache.keys()[: args.num]
    os.makedirs(args.output_dir, exist_ok=True)
    for image_id in ids:
        if image_id not in cache:
            raise InputError(f"image_id {image_id!r} is not in {args.cache}")
        if image_id not in files:
            raise InputError(f"image_id {image_id!r} is not in the dataset given")
        rgb = read_rgb(files[image_id])
        if rgb.shape[:2] != cache.image_size(image_id):
            raise InputError(f"{image_id}: the image is {rgb.shape[:2]} but the cache was made for {cache.image_size(image_id)}")
        value = cache[image_id]
        if cache.kind == "boxes":
            out = draw_boxes(rgb, value, args.max_boxes)
            what = f"{len(value)} boxes ({cache.stage(image_id)} filter stage), {min(len(value), args.max_boxes)} drawn"
        else:
            out = draw_mask(rgb, value, args.alpha)
            what = f"{int(value.max()) + 1} segments, label map {value.shape[1]}x{value.shape[0]}"
        path = os.path.join(args.output_dir, image_id.replace("/", "__") + ".png")
        Image.fromarray(out).save(path)
        print(f"{path}: {what}")
    return 0
