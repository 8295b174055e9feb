#!/usr/bin/env python
"""Draw the cached boxes or label maps of a few images onto the photos, as PNGs.

  python tools/visualize_proposals.py --cache proposals/demo_images_ss.pcache --dataset demo_images \\
      --output-dir output/vis_ss --num 4
  python tools/visualize_proposals.py --cache proposals/demo_images_fh.pcache --dataset demo_images \\
      --images astronaut rocket --output-dir output/vis_fh
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import soco_d2  # noqa: E402,F401  (compat shims before detectron2)


def build_parser():
    p = argparse.ArgumentParser(prog="visualize_proposals.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from PIL import Image

    from soco_d2.data import get_pretrain_dicts, load_image_folder
    from soco_d2.proposals import ProposalCache
    from soco_d2.imageio import read_rgb
    from soco_d2.proposals.visualize import draw_boxes, draw_mask

    if not os.path.isfile(args.cache):
        parser.error(f"no cache file {args.cache!r}")
    try:
        dicts = get_pretrain_dicts(args.dataset) if args.dataset else load_image_folder(args.image_dir)
    except (KeyError, FileNotFoundError) as e:
        parser.error(str(e))
    files = {str(d["image_id"]): d["file_name"] for d in dicts}
    cache = ProposalCache(args.cache)
    ids = args.images or cache.keys()[: args.num]
    os.makedirs(args.output_dir, exist_ok=True)
    for image_id in ids:
        if image_id not in cache:
            parser.error(f"image_id {image_id!r} is not in {args.cache}")
        if image_id not in files:
            parser.error(f"image_id {image_id!r} is not in the dataset given")
        rgb = read_rgb(files[image_id])
        if rgb.shape[:2] != cache.image_size(image_id):
            parser.error(f"{image_id}: the image is {rgb.shape[:2]} but the cache was made for {cache.image_size(image_id)}")
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


if __name__ == "__main__":
    sys.exit(main())
