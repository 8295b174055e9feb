"""Benchmark of the proposal / mask precompute (issue 3), printed as ratios
measured in one run on the embedded demo data:

1. selective search: images/s per process of every backend/mode/size against
   the ``selectivesearch`` package with the official SoCo parameters, and box
   recall at IoU 0.5 / 0.7 against the ground-truth boxes of the demo
   instance sets (proposals are computed on those images themselves), before
   and after SoCo's filter;
2. Felzenszwalb masks: images/s per process against the per-core throughput
   implied by DetCon's quoted cost (2-3 days on 16 cores for ImageNet
   train+val, ~1.33M images), on the demo photos resized to ImageNet's usual
   500 px, with the agreement (segmentation covering) of each fast setting
   with the paper setting;
3. the cache: bytes against the official SoCo JSON of the same boxes (and of
   label maps against DetCon's raw uint8 maps), open time and per-image read
   latency through mmap.

Usage: python bench/bench_proposals.py [--quick]
Everything runs in this one process with OpenCV limited to one thread.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import soco_d2  # noqa: E402,F401  (compat shims before detectron2)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from soco_d2.data import get_pretrain_dicts  # noqa: E402
from soco_d2.proposals import CacheWriter, ProposalCache, get_preset  # noqa: E402
from soco_d2.proposals.backends import build_backend  # noqa: E402
from soco_d2.proposals.boxes import best_overlaps, map_boxes_to_original  # noqa: E402
from soco_d2.proposals.codec import encode_boxes, encode_mask  # noqa: E402
from soco_d2.proposals.filters import parse_official_strategy  # noqa: E402
from soco_d2.imageio import read_rgb  # noqa: E402
from soco_d2.proposals.resize import resize_max_side  # noqa: E402
from soco_d2.proposals.official import official_json_bytes  # noqa: E402
from soco_d2.proposals.presets import PAPER_FILTER  # noqa: E402

# DetCon's quoted cost of its FH masks: "2-3 days on a 16-core machine" for
# ImageNet train + val (1,281,167 + 50,000 images).
DETCON_IMAGES = 1_281_167 + 50_000
DETCON_CORES = 16
DETCON_DAYS = (2.0, 2.5, 3.0)


def table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(out + [line(r) for r in rows])


def gt_images(splits):
    """(image_id, rgb, gt XYXY boxes) of the demo instance sets."""
    out = []
    for split in splits:
        for d in get_pretrain_dicts(f"demo_instances_{split}"):
            gt = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                           for a in d.get("annotations", [])], dtype=np.float64).reshape(-1, 4)
            out.append((f"{split}/{d['image_id']}", read_rgb(d["file_name"]), gt))
    return out


class Boxes(np.ndarray):
    """Proposals of one image that remember the (h, w) grid they were mapped back from."""


def _timed_boxes(backend, max_side, scale_params, rgb):
    t0 = time.process_time()
    small = resize_max_side(rgb, max_side)
    b = backend.scaled(small.shape[1] / rgb.shape[1]) if scale_params else backend
    boxes = map_boxes_to_original(b(small), small.shape[:2], rgb.shape[:2])
    t = time.process_time() - t0
    boxes = boxes.view(Boxes)
    boxes.grid = small.shape[:2]
    return boxes, t


def _keep_grid(kept, props):
    kept = np.asarray(kept).view(Boxes)
    kept.grid = getattr(props, "grid", None)
    return kept


def run_interleaved(configs, images, repeats):
    """Run every config on every image, configs interleaved per image so that
    load from other processes hits them alike; CPU time of this process, best
    of ``repeats`` per (config, image).  Returns [(proposals per image, seconds)]."""
    built = [(build_backend(b, **p), m, s, r) for (_n, b, p, m, s), r in
             zip(configs, [1 if c[1] == "selectivesearch" else repeats for c in configs])]
    props = [[None] * len(images) for _ in configs]
    secs = [[float("inf")] * len(images) for _ in configs]
    for rep in range(max(r for *_x, r in built)):
        for j, (_k, rgb, _g) in enumerate(images):
            for i, (backend, max_side, scale, reps) in enumerate(built):
                if rep < reps:
                    boxes, t = _timed_boxes(backend, max_side, scale, rgb)
                    props[i][j] = boxes
                    secs[i][j] = min(secs[i][j], t)
        print(f"  repeat {rep + 1} done", file=sys.stderr, flush=True)
    return [(props[i], sum(secs[i])) for i in range(len(configs))]


def recall(images, props, thr):
    ious = np.concatenate([best_overlaps(gt, p) for (_k, _rgb, gt), p in zip(images, props)])
    return float((ious >= thr).mean()) if len(ious) else float("nan")


SS_CONFIGS = [
    # name, backend, params, max_side, scale_params
    ("paper: selectivesearch (reference)", "selectivesearch", dict(scale=300, sigma=0.9, min_size=100), 0, False),
    ("opencv single", "opencv_ss", dict(mode="single", k=300, sigma=0.9, min_size=100), 0, False),
    ("opencv single", "opencv_ss", dict(mode="single", k=300, sigma=0.9, min_size=100), 256, True),
    ("opencv single", "opencv_ss", dict(mode="single", k=300, sigma=0.9, min_size=100), 224, True),
    ("opencv single", "opencv_ss", dict(mode="single", k=300, sigma=0.9, min_size=100), 192, True),
    ("opencv single", "opencv_ss", dict(mode="single", k=300, sigma=0.9, min_size=100), 160, True),
    ("opencv single, unscaled params", "opencv_ss", dict(mode="single", k=300, sigma=0.9, min_size=100), 192, False),
    ("opencv custom hsv+lab, k 150/300", "opencv_ss", dict(mode="custom", k=150, inc_k=150, num_k=2, sigma=0.9,
                                                           min_size=100, color_spaces=["hsv", "lab"]), 160, True),
    ("opencv fast", "opencv_ss", dict(mode="fast"), 0, False),
    ("opencv fast", "opencv_ss", dict(mode="fast"), 192, False),
    ("opencv fast", "opencv_ss", dict(mode="fast"), 128, False),
    ("opencv quality", "opencv_ss", dict(mode="quality"), 192, False),
    ("opencv quality", "opencv_ss", dict(mode="quality"), 128, False),
]


def bench_selective_search(args):
    images = gt_images(args.splits)
    policy = parse_official_strategy(PAPER_FILTER)
    n_gt = sum(len(g) for _k, _r, g in images)
    sizes = sorted({max(r.shape[:2]) for _k, r, _g in images})
    print(f"\n## Selective search: {len(images)} demo instance images (max side {sizes[0]}-{sizes[-1]} px), "
          f"{n_gt} ground-truth boxes; one process, OpenCV 1 thread\n")
    configs = SS_CONFIGS if not args.quick else [c for i, c in enumerate(SS_CONFIGS) if i in (0, 1, 4, 9)]
    eligible = [policy.stage_mask("main", np.round(g).astype(np.int64), r.shape[0], r.shape[1]) for _k, r, g in images]
    n_eligible = int(sum(e.sum() for e in eligible))
    rows, ref_ips, ref_r5, results = [], None, None, {}
    for (name, backend_name, params, max_side, scale), (props, secs) in zip(configs, run_interleaved(configs, images, args.repeats)):
        ips = len(images) / secs
        filtered = [_keep_grid(policy.apply(p, r.shape[0], r.shape[1])[0], p) for (_k, r, _g), p in zip(images, props)]
        r5, r7 = recall(images, props, 0.5), recall(images, props, 0.7)
        e5 = float(np.mean(np.concatenate([best_overlaps(g[e], f) >= 0.5 for (_k, _r, g), f, e in zip(images, filtered, eligible)])))
        e7 = float(np.mean(np.concatenate([best_overlaps(g[e], f) >= 0.7 for (_k, _r, g), f, e in zip(images, filtered, eligible)])))
        if ref_ips is None:
            ref_ips, ref_r5 = ips, r5
        results[(name, max_side)] = (props, filtered)
        rows.append([name, max_side or "full", "yes" if scale else "-", f"{ips:.2f}", f"{ips / ref_ips:.1f}x",
                     f"{np.mean([len(p) for p in props]):.0f}", f"{r5:.3f}", f"{r7:.3f}",
                     f"{np.mean([len(p) for p in filtered]):.0f}", f"{e5:.3f}", f"{e7:.3f}",
                     "yes" if ips >= 10 * ref_ips and r5 >= ref_r5 else "-"])
    print(table(["backend / mode", "max side", "scaled params", "img/s", "vs ref", "boxes/img", "R@0.5", "R@0.7",
                 "filtered boxes/img", "filt. R@0.5", "filt. R@0.7", ">=10x at >= ref R@0.5"], rows))
    print("\nimg/s: images per CPU-second of this one process (settings interleaved image by image, fast ones best of "
          f"{args.repeats}). R@t: fraction of the {n_gt} ground-truth boxes with a raw proposal of IoU >= t. "
          f"'filt.': the boxes training samples from (SoCo's {PAPER_FILTER} filter + whole-image fallback), recall of "
          f"the {n_eligible} ground-truth boxes that pass that filter themselves (most painted shapes are smaller "
          "than its 0.3 size-ratio minimum).")
    return images, results


def bench_ss_photos(args):
    """Speed (and boxes for the cache section) on the demo photos: at full
    resolution (the demo_images dataset) and resized to 500 px (ImageNet's
    usual size); no ground truth there."""
    full = [(d["image_id"], read_rgb(d["file_name"]), None) for d in get_pretrain_dicts("demo_images")]
    if args.quick:
        full = full[:3]
        args.crops = min(args.crops, 8)
    inet = [(k, resize_max_side(r, 500), g) for k, r, g in full]
    spec = get_preset("selective_search")
    ref = build_backend("selectivesearch", scale=300, sigma=0.9, min_size=100)
    cfg = [("ref", "selectivesearch", dict(ref.params), 0, False), ("ours", spec.backend, spec.params, spec.max_side, spec.scale_params)]
    policy = spec.filter
    filt = lambda imgs, props: [_keep_grid(policy.apply(p, r.shape[0], r.shape[1])[0], p) for (_k, r, _g), p in zip(imgs, props)]  # noqa: E731
    rows, sets = [], {}
    for label, images in ((f"{len(full)} demo photos, full resolution", full), ("the same resized to max side 500 (ImageNet-like)", inet)):
        (ref_props, ref_s), (ours_props, ours_s) = run_interleaved(cfg, images, args.repeats)
        mpx = np.mean([r.shape[0] * r.shape[1] for _k, r, _g in images]) / 1e6
        rows.append([label, f"{mpx:.2f}", f"{len(images) / ref_s:.2f}", f"{len(images) / ours_s:.2f}", f"{ref_s / ours_s:.1f}x",
                     f"{np.mean([len(p) for p in filt(images, ref_props)]):.0f}", f"{np.mean([len(p) for p in filt(images, ours_props)]):.0f}"])
        short = "full-res demo photos" if images is full else "demo photos at 500 px"
        sets[(short, "paper")] = (images, ref_props, filt(images, ref_props))
        sets[(short, f"'{spec.preset}' preset")] = (images, ours_props, filt(images, ours_props))
    print(f"\n### Default preset '{spec.preset}' against the paper preset on the demo photos\n")
    print(table(["images", "mean Mpx", "paper img/s", f"'{spec.preset}' img/s", "speed-up", "paper filtered boxes/img",
                 f"'{spec.preset}' filtered boxes/img"], rows))
    return sets


def crop_set(args):
    """A block-sized (64 images) ImageNet-like set for the cache sizes: random
    crops (50-100% of each side) of the demo photos, resized to max side 500."""
    photos = [read_rgb(d["file_name"]) for d in get_pretrain_dicts("demo_images")]
    rng = np.random.default_rng(0)
    out = []
    for i in range(args.crops):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1)), int(w * rng.uniform(0.5, 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out.append((f"n{i % 8:08d}/n{i % 8:08d}_{i}", resize_max_side(np.ascontiguousarray(p[y:y + ch, x:x + cw]), 500), None))
    spec = get_preset("selective_search")
    cfg = [("ref", "selectivesearch", dict(scale=300, sigma=0.9, min_size=100), 0, False),
           ("ours", spec.backend, spec.params, spec.max_side, spec.scale_params)]
    (ref_props, _), (ours_props, _) = run_interleaved(cfg, out, 1)
    filt = lambda props: [_keep_grid(spec.filter.apply(p, r.shape[0], r.shape[1])[0], p) for (_k, r, _g), p in zip(out, props)]  # noqa: E731
    label = f"{len(out)} crops of the photos at 500 px"
    return {(label, "paper"): (out, ref_props, filt(ref_props)),
            (label, f"'{spec.preset}' preset"): (out, ours_props, filt(ours_props))}


def covering(a, b):
    """Area-weighted best IoU of the segments of ``a`` by those of ``b`` (same shape)."""
    a = a.astype(np.int64).ravel()
    b = b.astype(np.int64).ravel()
    na, nb = a.max() + 1, b.max() + 1
    cont = np.bincount(a * nb + b, minlength=na * nb).reshape(na, nb).astype(np.float64)
    sa, sb = cont.sum(1, keepdims=True), cont.sum(0, keepdims=True)
    iou = cont / (sa + sb - cont)
    return float((iou.max(1) * sa[:, 0]).sum() / a.size)


FH_CONFIGS = [
    ("paper: skimage", "skimage_fh", 0, False),
    ("skimage", "skimage_fh", 384, False),
    ("skimage", "skimage_fh", 320, False),
    ("skimage, scaled params", "skimage_fh", 320, True),
    ("opencv graph segmentation", "opencv_fh", 0, False),
    ("opencv graph segmentation", "opencv_fh", 320, False),
]


def bench_fh(args):
    photos = [read_rgb(d["file_name"]) for d in get_pretrain_dicts("demo_images")]
    photos = [resize_max_side(p, args.fh_size) for p in photos]
    if args.quick:
        photos = photos[:4]
    px = np.mean([p.shape[0] * p.shape[1] for p in photos])
    implied = {days: DETCON_IMAGES / (days * 86400 * DETCON_CORES) for days in DETCON_DAYS}
    print(f"\n## Felzenszwalb masks: {len(photos)} demo photos resized to max side {args.fh_size} "
          f"(ImageNet-like, mean {px / 1e3:.0f} kpx); one process\n")
    print("DetCon's quoted cost, 2 / 2.5 / 3 days on 16 cores for 1.33M images, implies "
          + " / ".join(f"{implied[d]:.3f}" for d in DETCON_DAYS) + " img/s per core.\n")
    params = dict(scale=1000, sigma=0.8, min_size=1000)
    rows, paper = [], None
    for name, backend_name, max_side, scale in (FH_CONFIGS if not args.quick else FH_CONFIGS[:3]):
        backend = build_backend(backend_name, **params)
        best, maps = float("inf"), None
        for _ in range(args.repeats):
            t, out = 0.0, []
            for p in photos:
                t0 = time.process_time()
                small = resize_max_side(p, max_side)
                b = backend.scaled(small.shape[1] / p.shape[1]) if scale else backend
                lab = b(small)
                rec = encode_mask(lab, *p.shape[:2])
                t += time.process_time() - t0
                out.append((lab, len(rec)))
            if t < best:
                best, maps = t, out
        ips = len(photos) / best
        if paper is None:
            paper = [m for m, _ in maps]
        cov = np.mean([covering(ref, resize_labels_to(m, ref.shape)) for ref, (m, _) in zip(paper, maps)])
        raw = np.mean([p.shape[0] * p.shape[1] for p in photos])
        rows.append([name, max_side or "full", "yes" if scale else "-", f"{ips:.2f}",
                     " / ".join(f"{ips / implied[d]:.0f}x" for d in DETCON_DAYS),
                     f"{np.mean([m.max() + 1 for m, _ in maps]):.1f}", f"{cov:.3f}",
                     f"{np.mean([n for _, n in maps]) / 1e3:.1f}", f"{raw / np.mean([n for _, n in maps]):.0f}x"])
        print(f"  {name} @ {max_side or 'full'}: {ips:.2f} img/s", file=sys.stderr, flush=True)
    print(table(["backend", "max side", "scaled params", "img/s", "vs DetCon (2/2.5/3 d)", "segments/img",
                 "covering of paper", "stored KB/img", "vs raw uint8 map"], rows))
    print("\n'img/s' includes encoding the label map record (compressed uint8/uint16 planes). Covering: area-weighted "
          "best IoU of each paper-setting segment by the setting's segments (1.0 = identical).")


def resize_labels_to(labels, shape):
    if labels.shape == shape:
        return labels
    return cv2.resize(labels.astype(np.int32), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def _cache_row(images, boxes, tmp, label):
    path = os.path.join(tmp, "c.pcache")
    with CacheWriter(path, "boxes", {"method": "selective_search", "generator": {}, "versions": {}, "source": {}}) as w:
        for (key, rgb, _g), b in zip(images, boxes):
            w.add_boxes(key, rgb.shape[0], rgb.shape[1], np.asarray(b), grid=getattr(b, "grid", None))
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        hlen = int.from_bytes(f.read(16)[8:], "little")  # the (compressed) header's length
    with ProposalCache(path) as c:  # exact round trip, checked
        assert all(np.array_equal(c[k], b.astype(np.float32)) for (k, _r, _g), b in zip(images, boxes))
    js = official_json_bytes([(k, b) for (k, _r, _g), b in zip(images, boxes)])
    nb = sum(len(b) for b in boxes)
    body = size - 16 - hlen
    return label + [len(images), nb, f"{js / nb:.1f}", js, size, f"{js / size:.1f}x", body, f"{js / body:.1f}x",
                    f"{body / max(nb, 1):.2f}"]


def bench_cache(args, sets):
    with tempfile.TemporaryDirectory(prefix="bench_pcache-") as tmp:  # the caches written are removed
        _bench_cache_in(args, sets, tmp)


def _bench_cache_in(args, sets, tmp):
    print("\n## Cache size and read speed\n")
    lat_images, lat_boxes = sets.pop("_latency")
    rows = []
    for (images_label, boxes_label), (images, props, filtered) in sets.items():
        for which, boxes in (("filtered", filtered), ("raw", props)):
            rows.append(_cache_row(images, boxes, tmp, [images_label, boxes_label, which]))
    print(table(["images", "boxes from", "set", "images", "boxes", "JSON bytes/box", "official JSON bytes",
                 "cache bytes", "JSON / cache", "cache w/o header", "JSON / (cache w/o header)", "cache bytes/box"], rows))
    print("\n'filtered' is what the official JSON holds (SoCo's filter + fallbacks); 'raw' every proposal. The header "
          "(generator settings, versions, statistics; zlib) is a fixed ~0.3-0.5 KB per file. JSON digits grow with the image size, "
          "the cache's bytes do not, so small images give smaller ratios. Every cache was read back and compared exactly.")
    # read latency on a large cache: the demo records under many keys
    n = args.latency_images
    recs = [(rgb.shape[:2], encode_boxes(f, rgb.shape[0], rgb.shape[1])) for (_k, rgb, _g), f in zip(lat_images, lat_boxes)]
    path = os.path.join(tmp, "big.pcache")
    with CacheWriter(path, "boxes", {"method": "selective_search", "generator": {}, "versions": {}, "source": {}}) as w:
        for i in range(n):
            w.add_record(f"n{i % 1000:08d}/n{i % 1000:08d}_{i}", recs[i % len(recs)][1])
    keys = [f"n{i % 1000:08d}/n{i % 1000:08d}_{i}" for i in range(n)]
    def timed(fn, n):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n

    rng = random.Random(0)
    sample = [keys[rng.randrange(n)] for _ in range(args.reads)]
    (t_open, c_open) = timed(lambda: ProposalCache(path).close(), 1)
    c = ProposalCache(path)
    in_order = c.keys()[: args.reads]
    t_rand, c_rand = timed(lambda: [c[k] for k in sample], len(sample))
    t_seq, c_seq = timed(lambda: [c[k] for k in in_order], len(in_order))
    t_miss, c_miss = timed(lambda: [("x" + k) in c for k in sample[:2000]], 2000)
    print(f"\nRead latency on a {n:,}-image cache ({os.path.getsize(path) / 1e6:.1f} MB, blocks of 64 images), "
          "wall / CPU time of this process:\n")
    print(table(["operation", "wall", "CPU"], [
        ["open (mmap, parse header)", f"{t_open * 1e3:.2f} ms", f"{c_open * 1e3:.2f} ms"],
        ["`cache[key]`, random keys", f"{t_rand * 1e6:.0f} us", f"{c_rand * 1e6:.0f} us"],
        ["`cache[key]`, keys in file order", f"{t_seq * 1e6:.0f} us", f"{c_seq * 1e6:.0f} us"],
        ["`key in cache`, missing key", f"{t_miss * 1e6:.1f} us", f"{c_miss * 1e6:.1f} us"],
    ]))
    c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer settings and images (a smoke run)")
    ap.add_argument("--splits", nargs="+", default=["train", "val"], help="demo instance splits used as ground truth")
    ap.add_argument("--repeats", type=int, default=2, help="timing repeats of the fast settings (best is kept)")
    ap.add_argument("--fh-size", type=int, default=500, help="max side the demo photos are resized to for FH")
    ap.add_argument("--crops", type=int, default=64, help="images of the ImageNet-like crop set for the cache sizes")
    ap.add_argument("--latency-images", type=int, default=100_000, help="size of the cache for the read-latency test")
    ap.add_argument("--reads", type=int, default=20_000, help="reads timed")
    ap.add_argument("--skip", nargs="*", default=[], choices=["ss", "photos", "fh", "cache"], help="sections to skip")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    print(f"# bench_proposals ({os.cpu_count()} CPUs visible; OpenCV {cv2.__version__})")
    sets = {}
    if "ss" not in args.skip:
        images, results = bench_selective_search(args)
        for (name, max_side), (props, filtered) in results.items():
            if name.startswith("paper") or (name, max_side) == ("opencv single", 192):
                sets[("demo instance images (320 px)", f"{name} @ {max_side or 'full'}")] = (images, props, filtered)
    if "photos" not in args.skip:
        sets.update(bench_ss_photos(args))
    if "cache" not in args.skip and "photos" not in args.skip:
        sets.update(crop_set(args))
    if "fh" not in args.skip:
        bench_fh(args)
    if "cache" not in args.skip and sets:
        first = next(iter(sets.values()))
        sets["_latency"] = (first[0], first[2])
        bench_cache(args, sets)


if __name__ == "__main__":
    main()
