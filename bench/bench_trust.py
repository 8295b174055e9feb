#!/usr/bin/env python
"""What the data-side checks cost (issue 16), each against its unchecked
baseline in this process, interleaved, in CPU time of this process:

* cache reads with the per-block CRC32 check vs the same reads without it
  (random keys and keys in file order), and the open with the index CRC32;
* the start-up check of a cache against a dataset (image-id digest; index
  look-ups when the dataset is a subset);
* the shared image reader (``soco_d2.imageio.read_rgb``) vs detectron2's
  ``read_image`` on the demo photos.

    python bench/bench_trust.py [--images 100000] [--reads 20000]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import soco_d2  # noqa: E402,F401  (compat shims before detectron2)
from detectron2.data.detection_utils import read_image  # noqa: E402

from soco_d2.data import get_pretrain_dicts  # noqa: E402
from soco_d2.imageio import read_rgb  # noqa: E402
from soco_d2.proposals import CacheWriter, ProposalCache, get_preset  # noqa: E402
from soco_d2.proposals.generate import ProposalGenerator  # noqa: E402
from soco_d2.proposals.verify import check_cache  # noqa: E402


def cpu(fn, n=1):
    c0 = time.process_time()
    fn()
    return (time.process_time() - c0) / n


def interleaved(a, b, repeats):
    """Median CPU seconds of a and b, alternated ``repeats`` times."""
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(a())
        tb.append(b())
    return statistics.median(ta), statistics.median(tb)


def unchecked(cache):
    cache._block_crc = None  # the baseline: the same file read without the block checksums
    return cache


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000, help="images in the synthetic box cache")
    ap.add_argument("--reads", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    photos = get_pretrain_dicts("demo_images")
    gen = ProposalGenerator(get_preset("selective_search"))
    records = [gen.record(read_rgb(d["file_name"]))[0] for d in photos]
    with tempfile.TemporaryDirectory(prefix="bench_trust-") as tmp:  # removed even when a step fails
        path = os.path.join(tmp, "big.pcache")
        keys = [f"n{i % 1000:08d}/n{i % 1000:08d}_{i}" for i in range(args.images)]
        header = {"method": "selective_search", "generator": {}, "versions": {}, "source": {}}
        with CacheWriter(path, "boxes", header) as w:
            for i, key in enumerate(keys):
                w.add_record(key, records[i % len(records)])
        rng = random.Random(0)
        sample = [keys[rng.randrange(len(keys))] for _ in range(args.reads)]
        checked, plain = ProposalCache(path), unchecked(ProposalCache(path))
        in_order = checked.keys()[: args.reads]
        rows = []
        for label, ks in (("`cache[key]`, random keys", sample), ("`cache[key]`, keys in file order", in_order)):
            def reader(c, ks=ks):
                def run():
                    c._blocks.clear()
                    return cpu(lambda: [c[k] for k in ks], len(ks))
                return run
            t_crc, t_plain = interleaved(reader(checked), reader(plain), args.repeats)
            rows.append((label, t_crc * 1e6, t_plain * 1e6, "us"))
        index = open(path, "rb").read()[checked._blob_base - checked.header["sections"]["blob"][0] : checked._blob_base]
        t_open, t_crc = interleaved(lambda: cpu(lambda: ProposalCache(path).close()),
                                    lambda: cpu(lambda: zlib.crc32(index)), args.repeats)
        rows.append(("open (header, index CRC32)", t_open * 1e3, (t_open - t_crc) * 1e3, "ms"))
        size = os.path.getsize(path) / 1e6
        print(f"## Cache checks: {args.images:,}-image box cache ({size:.1f} MB), CPU time, "
              f"median of {args.repeats} interleaved\n")
        print("| operation | checked | unchecked (open: minus the index CRC32) | ratio |\n|---|---|---|---|")
        for label, a, b, unit in rows:
            print(f"| {label} | {a:.1f} {unit} | {b:.1f} {unit} | {a / b:.2f}x |")

        dicts = [{"image_id": k} for k in keys]
        t_same = cpu(lambda: check_cache(path, "boxes", dicts))
        t_subset = cpu(lambda: check_cache(path, "boxes", dicts[: len(dicts) // 2]))
        print(f"\nStart-up check against the dataset: same image ids (digest) {t_same * 1e3:.0f} ms; "
              f"half of them (index look-ups) {t_subset * 1e3:.0f} ms CPU, for {args.images:,} images")

        files = [d["file_name"] for d in photos]
        pixels = sum(read_rgb(f).shape[0] * read_rgb(f).shape[1] for f in files)
        t_ours, t_d2 = interleaved(lambda: cpu(lambda: [read_rgb(f) for f in files]),
                                   lambda: cpu(lambda: [read_image(f, format="RGB") for f in files]), args.repeats)
        print(f"\nImage reader on the {len(files)} demo photos ({pixels / 1e6:.1f} Mpixel): soco_d2.imageio.read_rgb "
              f"{pixels / t_ours / 1e6:.1f} Mpixel/s vs detectron2 read_image {pixels / t_d2 / 1e6:.1f} Mpixel/s CPU "
              f"(ratio {t_d2 / t_ours:.2f}x)")
        checked.close()
        plain.close()


if __name__ == "__main__":
    main()
