#!/usr/bin/env python
"""Pretraining cost of each method on the same R50 and the same images, measured
in one process, printed as ratios against its image-level baseline:

* SoCo_FPN step time per image vs BYOL (image-level views, no RoI heads);
* DetCon-B vs BYOL;  DenseCL vs MoCo-v2 (the DenseCL paper: < 1 % on GPUs);
* the multi-view mappers' images/s per dataloader worker (one process).

A step is forward + backward + optimizer step of the paper config's model
(views, heads, optimizer), on a fixed batch made from the demo photos by the
method's own mapper.  Norms run as BN (one process).

    python bench/bench_pretrain.py                       # CPU, paper view sizes, batch 4
    python bench/bench_pretrain.py --quick               # demo view sizes (a minute or two)
    python bench/bench_pretrain.py --device cuda --batch 64 --amp both
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import soco_d2  # noqa: E402  (compat shims first)
import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from soco_d2.data import build_ssl_mapper, get_pretrain_dicts  # noqa: E402
from soco_d2.data.build import preserved_global_rngs, seed_global_rngs  # noqa: E402
from soco_d2.engine.solver import build_pretrain_optimizer  # noqa: E402

BOXES = os.path.join(ROOT, "proposals", "demo_images_ss.pcache")
MASKS = os.path.join(ROOT, "proposals", "demo_images_fh.pcache")
# method -> (paper config, demo config); the demo config only lends its view sizes (--quick)
METHODS = {
    "BYOL": "byol_r50.yaml",
    "SoCo_FPN": "soco_r50_fpn.yaml",
    "DetCon-B": "detcon_b_r50.yaml",
    "MoCo-v2": "mocov2_r50.yaml",
    "DenseCL": "densecl_r50.yaml",
}
COMPARISONS = (("SoCo_FPN", "BYOL"), ("DetCon-B", "BYOL"), ("DenseCL", "MoCo-v2"))


def ensure_caches() -> None:
    for path, method in ((BOXES, "selective_search"), (MASKS, "felzenszwalb")):
        if not os.path.isfile(path):
            subprocess.run(
                [sys.executable, os.path.join(ROOT, "tools", "precompute_proposals.py"), "--dataset", "demo_images",
                 "--method", method, "--output", path, "--no-progress"],
                check=True,
            )


def bench_cfg(name: str, args):
    cfg = soco_d2.get_pretrain_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", name))
    if args.quick:
        demo = soco_d2.get_pretrain_cfg()
        demo.merge_from_file(os.path.join(ROOT, "configs", "demo", name))
        cfg.INPUT.SSL.VIEW_SIZES = list(demo.INPUT.SSL.VIEW_SIZES)
    cfg.MODEL.DEVICE = args.device
    for node, key in ((cfg.MODEL.RESNETS, "NORM"), (cfg.MODEL.FPN, "NORM"), (cfg.MODEL.ROI_BOX_HEAD, "NORM"), (cfg.MODEL.SSL, "HEAD_NORM")):
        if node[key] == "SyncBN":
            node[key] = "BN"
    cfg.PROPOSALS.BOX_CACHE, cfg.PROPOSALS.MASK_CACHE = BOXES, MASKS
    cfg.SOLVER.IMS_PER_BATCH = args.batch
    return cfg


def make_batch(mapper, dicts, batch: int, seed: int = 0) -> list[dict]:
    out = []
    with preserved_global_rngs():
        for i in range(batch):
            seed_global_rngs(seed + i)
            out.append(mapper(dict(dicts[i % len(dicts)])))
    return out


def mapper_images_per_s(mapper, dicts, seconds: float) -> float:
    count, start = 0, time.perf_counter()
    with preserved_global_rngs():
        while time.perf_counter() - start < seconds:
            seed_global_rngs(count)
            mapper(dict(dicts[count % len(dicts)]))
            count += 1
    return count / (time.perf_counter() - start)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Stepper:
    """One method's model, optimizer and fixed batch; ``step()`` times forward +
    backward + optimizer step + momentum update."""

    def __init__(self, cfg, batch, amp: bool):
        torch.manual_seed(0)
        self.model = build_model(cfg)
        self.model.train()
        self.optimizer = build_pretrain_optimizer(cfg, self.model)
        self.device = cfg.MODEL.DEVICE
        self.batch = batch
        self.amp = amp

    def step(self) -> float:
        autocast = (
            torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()
        )
        synchronize(self.device)
        start = time.perf_counter()
        with EventStorage(0), autocast:
            losses = self.model(self.batch)
        loss = sum(v.float() for v in losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.model.momentum_update(0.99)
        synchronize(self.device)
        return time.perf_counter() - start


def interleaved_seconds(steppers, steps: int) -> list[float]:
    """Median step time of each stepper, their steps interleaved (A B A B ...) so
    that drifts of the machine's speed hit all of them alike; one untimed warm-up
    step each (kernel selection, allocator)."""
    for stepper in steppers:
        stepper.step()
    times = [[] for _ in steppers]
    for _ in range(steps):
        for stepper, record in zip(steppers, times):
            record.append(stepper.step())
    return [sorted(t)[len(t) // 2] for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4, help="images per step (default 4)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method (median reported)")
    parser.add_argument("--quick", action="store_true", help="the demo configs' small views instead of the paper's")
    parser.add_argument("--amp", choices=("off", "on", "both"), default="off", help="bf16 autocast")
    parser.add_argument("--mapper-seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ensure_caches()
    dicts = get_pretrain_dicts("demo_images")
    amp_modes = {"off": [False], "on": [True], "both": [False, True]}[args.amp]

    print(f"device {args.device}, batch {args.batch}, {'demo' if args.quick else 'paper'} view sizes, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.steps} interleaved steps")
    cfgs = {method: bench_cfg(name, args) for method, name in METHODS.items()}
    mappers = {method: build_ssl_mapper(cfg) for method, cfg in cfgs.items()}
    batches = {method: make_batch(mappers[method], dicts, args.batch) for method in METHODS}

    rows = []
    for method, baseline in COMPARISONS:
        for amp in amp_modes:
            steppers = [Stepper(cfgs[m], batches[m], amp) for m in (method, baseline)]
            a, b = interleaved_seconds(steppers, args.steps)
            del steppers
            rows.append((method, baseline, amp, a / args.batch, b / args.batch))
            print(f"  {method} vs {baseline}, amp={'on' if amp else 'off'}: {a:.3f} s vs {b:.3f} s per step", flush=True)

    print("\n| method | baseline | AMP | ms / image | baseline ms / image | ratio |")
    print("|---|---|---|---|---|---|")
    for method, baseline, amp, a, b in rows:
        print(f"| {method} | {baseline} | {'on' if amp else 'off'} | {1000 * a:.1f} | {1000 * b:.1f} | {a / b:.2f}x |")

    print("\n| mapper (method) | views | images/s per worker | ratio to TwoViewMapper (BYOL) |")
    print("|---|---|---|---|")
    rates = {m: mapper_images_per_s(mp, dicts, args.mapper_seconds) for m, mp in mappers.items()}
    for method, mapper in mappers.items():
        sizes = list(cfgs[method].INPUT.SSL.VIEW_SIZES)
        print(f"| {type(mapper).__name__} ({method}) | {sizes} | {rates[method]:.1f} | {rates[method] / rates['BYOL']:.2f}x |")


if __name__ == "__main__":
    main()
