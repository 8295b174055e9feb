#!/usr/bin/env python
"""Can the data pipeline feed a GPU?  One run, the same images, printed as tables:

1. the decode limit: PIL decode + RGB of the JPEGs, images per CPU-second;
2. every method's mapper, CPU-side, with ``INPUT.SSL.PHOTOMETRIC_ON model`` (views
   leave as uint8, colour ops on the device) and ``mapper`` (colour ops in the
   worker): images per CPU-second of one process (= per dataloader worker, one
   thread), everything a worker does per sample (RNG seeding, mapping, the
   method's collate), and as a fraction of the decode limit measured in the
   same rounds (decode and mappers interleaved, median over rounds);
3. the batched photometric ops on the device (``--device``): ms per image (all
   its views) at a batch of ``--photometric-batch``;
4. end to end: the pretraining DataLoader with ``--workers`` workers, images/s (wall);
5. capacity: FLOPs per image of each paper config (forward + backward + target
   forward, counted with ``torch.utils.flop_counter``), the images/s a GPU
   sustaining ``--tflops`` asks for, and the data cores per GPU that takes at
   the measured per-core rates;
6. reduced-size JPEG decoding (``INPUT.SSL.JPEG_DRAFT``): how often it fires,
   its speed, and its effect on the pixels.

Images: ``--images`` ImageNet-like JPEGs (the demo photos cropped to 60-100 %,
resized to a 500 px longer side, quality 90), and proposal / mask caches made by
tools/precompute_proposals.py, all under ``--work-dir`` (kept for the next run).

    python bench/bench_data.py                   # about 5-10 minutes on 2 CPU cores
    python bench/bench_data.py --device cuda     # photometric cost on the GPU too
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import soco_d2  # noqa: E402  (compat shims first)
import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from PIL import Image  # noqa: E402

from soco_d2.data import build_ssl_mapper, get_pretrain_dicts  # noqa: E402
from soco_d2.data.build import PositionMappedDataset, PretrainLoader, SampleStream  # noqa: E402
from soco_d2.modeling.meta_arch.base import SSLMetaArch  # noqa: E402

METHODS = {
    "BYOL": "byol_r50.yaml",
    "MoCo-v2": "mocov2_r50.yaml",
    "DenseCL": "densecl_r50.yaml",
    "SoCo_FPN": "soco_r50_fpn.yaml",
    "DetCon-B": "detcon_b_r50.yaml",
}
TARGETS = {"BYOL": 0.40, "MoCo-v2": 0.40, "DenseCL": 0.40, "SoCo_FPN": 0.25, "DetCon-B": 0.25}  # issue 12


# --------------------------------------------------------------------------- inputs
def make_images(folder: str, count: int, max_side: int = 500) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, f"{i:03d}.jpg") for i in range(count)]
    if all(os.path.isfile(p) for p in paths):
        return paths
    photos = [Image.open(d["file_name"]).convert("RGB") for d in get_pretrain_dicts("demo_images")]
    rng = np.random.default_rng(0)
    for i, path in enumerate(paths):
        photo = photos[i % len(photos)]
        scale = rng.uniform(0.6, 1.0)
        w, h = int(photo.width * scale), int(photo.height * scale)
        x0, y0 = rng.integers(0, photo.width - w + 1), rng.integers(0, photo.height - h + 1)
        crop = photo.crop((x0, y0, x0 + w, y0 + h))
        factor = max_side / max(w, h)
        crop.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.BICUBIC).save(path, quality=90)
    return paths


def make_caches(images: str, work_dir: str) -> tuple[str, str]:
    out = []
    for method, name in (("selective_search", "ss"), ("felzenszwalb", "fh")):
        path = os.path.join(work_dir, f"{name}.pcache")
        if not os.path.isfile(path):
            tool = os.path.join(ROOT, "tools", "precompute_proposals.py")
            subprocess.run([sys.executable, tool, "--image-dir", images, "--method", method, "--output", path,
                            "--workers", "2", "--no-progress"], check=True)
        out.append(path)
    return out[0], out[1]


def method_cfg(name: str, placement: str, caches, device: str = "cpu", draft: bool = False):
    cfg = soco_d2.get_pretrain_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", name))
    for node, key in ((cfg.MODEL.RESNETS, "NORM"), (cfg.MODEL.FPN, "NORM"), (cfg.MODEL.ROI_BOX_HEAD, "NORM"),
                      (cfg.MODEL.SSL, "HEAD_NORM")):
        if node[key] == "SyncBN":
            node[key] = "BN"
    cfg.MODEL.DEVICE = device
    cfg.PROPOSALS.BOX_CACHE, cfg.PROPOSALS.MASK_CACHE = caches
    cfg.INPUT.SSL.PHOTOMETRIC_ON = placement
    cfg.INPUT.SSL.JPEG_DRAFT = draft
    return cfg


# --------------------------------------------------------------------------- measurements
def decode_rate(paths: list[str]) -> float:
    start = time.process_time()
    for path in paths:
        np.asarray(Image.open(path).convert("RGB"))
    return len(paths) / (time.process_time() - start)


def mapper_rate(dataset: PositionMappedDataset, collate, start: int, count: int, batch: int = 32) -> float:
    """What a worker does: seed + map each position, collate each batch; per CPU-second."""
    begin = time.process_time()
    for first in range(start, start + count, batch):
        collate([dataset[p] for p in range(first, min(first + batch, start + count))])
    return count / (time.process_time() - begin)


def median(values) -> float:
    return float(statistics.median(values))


def photometric_ms(batch: dict, device: str, repeats: int = 3) -> float:
    model = SSLMetaArch(pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).to(device)
    on_device = model.prepare(batch)
    times = []
    for _ in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for v in range(len(on_device["views"])):
            model.view_images(on_device, v)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * median(times[1:]) / len(batch["image_ids"])


def loader_rate(dicts, mapper, batch: int, workers: int, batches: int) -> float:
    loader = iter(PretrainLoader(dicts, mapper, batch, seed=0, num_workers=workers, rank=0, world_size=1))
    for _ in range(2 * max(workers, 1) + 1):  # worker start-up and the prefetched batches
        next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    rate = batches * batch / (time.perf_counter() - start)
    del loader
    return rate


def flops_per_image(cfg, dataset, collate) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    batch = collate([dataset[p] for p in range(2)])
    with FlopCounterMode(display=False) as counter, EventStorage(0):
        losses = model(batch)
        sum(losses.values()).backward()
    return counter.get_total_flops() / 2


def draft_effect(cfg_off, cfg_on, dicts) -> dict:
    """JPEG_DRAFT off vs on, same samples: how often a reduced decode fires, rates, pixel differences."""
    from soco_d2.data.decode import EncodedImage

    off, on = build_ssl_mapper(cfg_off), build_ssl_mapper(cfg_on)
    stream = SampleStream(len(dicts), 1, 0)
    fired, diffs, times = 0, [], {"off": 0.0, "on": 0.0}
    original = EncodedImage.decode
    calls = []

    def recording(self, reduction=1):
        calls.append(reduction)
        return original(self, reduction)

    EncodedImage.decode = recording
    try:
        for p in range(len(dicts)):
            outs = {}
            for name, mapper in (("off", off), ("on", on)):
                start = time.process_time()
                outs[name] = PositionMappedDataset(dicts, mapper, stream)[p]
                times[name] += time.process_time() - start
            fired += calls[-1] > 1
            if calls[-1] > 1:
                for a, b in zip(outs["on"]["views"], outs["off"]["views"]):
                    diffs.append((a.float() - b.float()).abs().flatten())
    finally:
        EncodedImage.decode = original
    diff = torch.cat(diffs) if diffs else torch.zeros(1)
    mse = float((diff ** 2).mean())
    return {"fired": fired / len(dicts), "rate_off": len(dicts) / times["off"], "rate_on": len(dicts) / times["on"],
            "mean_abs": float(diff.mean()), "p99": float(torch.quantile(diff, 0.99)),
            "psnr": 10 * np.log10(255.0 ** 2 / mse) if mse > 0 else float("inf")}


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default=os.path.join(ROOT, "output", "bench_data"))
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median reported)")
    parser.add_argument("--samples", type=int, default=64, help="samples per mapper per round")
    parser.add_argument("--device", default="cpu", help="where the batched photometric ops are timed")
    parser.add_argument("--photometric-batch", type=int, default=64)
    parser.add_argument("--photometric-threads", type=int, default=1,
                        help="torch threads for the photometric timing on a CPU (a shared machine: 1)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the end-to-end rate")
    parser.add_argument("--loader-batches", type=int, default=8, help="timed batches, after the prefetched ones")
    parser.add_argument("--loader-batch", type=int, default=32)
    parser.add_argument("--tflops", type=float, default=60.0,
                        help="sustained TFLOP/s of the GPU for the capacity table (default: an H100 on ResNet-50)")
    parser.add_argument("--skip-flops", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(1)  # a dataloader worker runs one thread
    image_dir = os.path.join(args.work_dir, "images")
    paths = make_images(image_dir, args.images)
    caches = make_caches(image_dir, args.work_dir)
    dicts = get_pretrain_dicts(f"folder:{image_dir}")
    stream = SampleStream(len(dicts), 1, 0)

    cfgs = {(m, p): method_cfg(name, p, caches) for m, name in METHODS.items() for p in ("model", "mapper")}
    mappers = {key: build_ssl_mapper(cfg) for key, cfg in cfgs.items()}
    datasets = {key: PositionMappedDataset(dicts, mapper, stream) for key, mapper in mappers.items()}
    print(f"{len(paths)} JPEGs (max side 500, quality 90) in {image_dir}; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)

    # 1-2: decode limit and mapper rates, interleaved
    decode, rates, fractions = [], {k: [] for k in mappers}, {k: [] for k in mappers}
    for r in range(args.rounds):
        limit = decode_rate(paths)
        decode.append(limit)
        for key in mappers:
            rate = mapper_rate(datasets[key], mappers[key].collate, r * args.samples, args.samples)
            rates[key].append(rate)
            fractions[key].append(rate / limit)
        print(f"  round {r + 1}/{args.rounds}: decode {limit:.0f} img/s", flush=True)
    print(f"\nDecode limit (PIL decode + RGB, one thread): {median(decode):.0f} img/s per core "
          f"(rounds: {', '.join(f'{d:.0f}' for d in decode)})\n")
    print("| method | mapper | PHOTOMETRIC_ON model: img/s per core | fraction of decode | target | "
          "PHOTOMETRIC_ON mapper: img/s per core | fraction of decode |")
    print("|---|---|---|---|---|---|---|")
    for method in METHODS:
        m, c = (method, "model"), (method, "mapper")
        print(f"| {method} | {type(mappers[m]).__name__} | {median(rates[m]):.0f} | {median(fractions[m]):.3f} | "
              f">= {TARGETS[method]:.2f} {'ok' if median(fractions[m]) >= TARGETS[method] else 'MISSED'} | "
              f"{median(rates[c]):.0f} | {median(fractions[c]):.3f} |")

    # 3: batched photometric ops on the device
    torch.set_num_threads(args.photometric_threads)
    print(f"\nBatched photometric ops (colour jitter, grayscale, blur, solarize, normalise, cutout) on "
          f"{args.device}, batch {args.photometric_batch}, {torch.get_num_threads()} threads:\n")
    print("| method | views | ms per image (all views) |")
    print("|---|---|---|")
    for method in METHODS:
        key = (method, "model")
        batch = mappers[key].collate([datasets[key][p] for p in range(args.photometric_batch)])
        ms = photometric_ms(batch, args.device)
        print(f"| {method} | {list(cfgs[key].INPUT.SSL.VIEW_SIZES)} | {ms:.2f} |", flush=True)

    # 4: end to end
    torch.set_num_threads(1)
    print(f"\nDataLoader, {args.workers} workers, batch {args.loader_batch}, wall clock "
          f"(this machine's other load counts too):\n")
    print("| method | PHOTOMETRIC_ON model: img/s | PHOTOMETRIC_ON mapper: img/s |")
    print("|---|---|---|")
    for method in METHODS:
        row = [loader_rate(dicts, mappers[(method, p)], args.loader_batch, args.workers, args.loader_batches)
               for p in ("model", "mapper")]
        print(f"| {method} | {row[0]:.0f} | {row[1]:.0f} |", flush=True)

    # 5: capacity
    if not args.skip_flops:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        print(f"\nCapacity at {args.tflops:.0f} TFLOP/s per GPU (paper view sizes; FLOPs counted by "
              f"torch.utils.flop_counter over forward + backward incl. the target/key forward):\n")
        print("| method | GFLOP per image | GPU img/s | data cores per GPU, colour on the GPU | "
              "data cores per GPU, colour in the workers |")
        print("|---|---|---|---|---|")
        for method in METHODS:
            key = (method, "model")
            flops = flops_per_image(cfgs[key], datasets[key], mappers[key].collate)
            gpu = args.tflops * 1e12 / flops
            cores = [gpu / median(rates[(method, p)]) for p in ("model", "mapper")]
            print(f"| {method} | {flops / 1e9:.0f} | {gpu:.0f} | {cores[0]:.1f} | {cores[1]:.1f} |", flush=True)

    # 6: JPEG draft
    torch.set_num_threads(1)
    big_dir = os.path.join(args.work_dir, "images_1500")
    make_images(big_dir, 16, max_side=1500)
    print("\nJPEG_DRAFT (reduced-size decode when every view still downsamples its crop), BYOL and SoCo_FPN mappers, "
          "PHOTOMETRIC_ON model:\n")
    print("| images | mapper | samples decoded reduced | img/s per core off | on | view pixels where it fired: "
          "mean abs diff | 99th pct | PSNR dB |")
    print("|---|---|---|---|---|---|---|---|")
    for label, folder in (("64 at 500 px", image_dir), ("16 at 1500 px", big_dir)):
        folder_dicts = get_pretrain_dicts(f"folder:{folder}")
        for method in ("BYOL", "SoCo_FPN"):
            if method == "SoCo_FPN" and folder != image_dir:
                continue  # the caches cover the 500 px set only
            off = method_cfg(METHODS[method], "model", caches)
            on = method_cfg(METHODS[method], "model", caches, draft=True)
            e = draft_effect(off, on, folder_dicts)
            print(f"| {label} | {method} | {100 * e['fired']:.0f} % | {e['rate_off']:.0f} | {e['rate_on']:.0f} | "
                  f"{e['mean_abs']:.2f} | {e['p99']:.1f} | {e['psnr']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
