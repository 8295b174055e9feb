#!/usr/bin/env python
"""GPU memory each paper pretraining config needs, measured on a CPU, and the
fewest 80 GB GPUs that hold its global batch.

Per config (paper view sizes, the demo photos through the method's own mapper,
BN instead of SyncBN, one process):

* activation + loss memory per image: the bytes autograd keeps for backward
  (saved-tensor hooks; storages counted once, parameters left out) after the
  training forward, in float32 and under bf16 autocast (the size of fp16 AMP on
  a GPU), at two small batches: the slope between them is the per-image cost
  and the two points check that memory is linear in the batch (the intercepts
  are static: the bf16 weight copies autocast saves, MoCo-v2 / DenseCL's queue
  copies);
* with ``--rss``: the peak-RSS increase of a whole forward + backward in a fresh
  process, at the same two batches (float32), which adds what hooks cannot see
  (gradients of activations alive during backward, kernel workspaces);
* static memory per GPU, from the parameter counts: fp32 weights, gradients,
  DDP's gradient buckets and the optimizer's momentum of the trainable
  (online) network, the momentum target's weights, buffers (queues), the
  measured intercept (the fp16 weight copies autocast saves, the queue copies
  MoCo-v2 / DenseCL's losses save), and for DetCon the loss's gathered keys at
  the global batch plus its logit chunks.

GPUs needed = the fewest W dividing the global batch (SOLVER.IMS_PER_BATCH) with
static + (global / W) x per-image x (1 + backward overhead) <= 90 % of 80 GB
(the rest: CUDA context, cuDNN workspaces, allocator fragmentation).  The
backward overhead is the measured peak-RSS / saved ratio minus 1 with ``--rss``,
else 0.25.

    python bench/bench_memory.py           # hooks only, about 5 minutes on 2 cores
    python bench/bench_memory.py --rss     # + peak RSS in subprocesses (about 10 more minutes)
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import soco_d2  # noqa: E402  (compat shims first)
import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from bench_pretrain import BOXES, MASKS, ensure_caches, make_batch  # noqa: E402
from soco_d2.data import build_ssl_mapper, get_pretrain_dicts  # noqa: E402
from soco_d2.modeling.losses import LOGIT_CHUNK_ELEMENTS  # noqa: E402

CONFIGS = [
    "byol_r50.yaml", "mocov2_r50.yaml", "densecl_r50.yaml",
    "detcon_b_r50.yaml", "detcon_b_r50_fpn.yaml", "detcon_s_r50.yaml",
    "soco_r50_c4.yaml", "soco_r50_fpn.yaml", "soco_star_r50_fpn.yaml",
]
GPU_BYTES = 80e9
USABLE = 0.9
DEFAULT_BACKWARD_OVERHEAD = 0.25
GB, MB = 1e9, 1e6


def paper_cfg(name: str):
    cfg = soco_d2.get_pretrain_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", name))
    cfg.MODEL.DEVICE = "cpu"
    for node, key in ((cfg.MODEL.RESNETS, "NORM"), (cfg.MODEL.FPN, "NORM"), (cfg.MODEL.ROI_BOX_HEAD, "NORM"),
                      (cfg.MODEL.SSL, "HEAD_NORM")):
        if node[key] == "SyncBN":
            node[key] = "BN"
    cfg.PROPOSALS.BOX_CACHE, cfg.PROPOSALS.MASK_CACHE = BOXES, MASKS
    return cfg


def build(name: str, batches: tuple[int, ...]):
    cfg = paper_cfg(name)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    dicts = get_pretrain_dicts("demo_images")
    mapper = build_ssl_mapper(cfg)
    data = {b: make_batch(mapper, dicts, b) for b in batches}
    return cfg, model, data


def autocast(amp: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def saved_bytes(model, batch, amp: bool) -> int:
    """Bytes of the storages autograd saves for backward in one training forward,
    each storage once, the model's own parameters and buffers excluded."""
    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), EventStorage(0), autocast(amp):
        losses = model(batch)
    del losses
    return sum(storages.values())


def static_bytes(cfg, model, amp: bool, intercept: float) -> dict:
    """Per-GPU memory that does not grow with the local batch; ``intercept``: the saved
    bytes at batch 0 (the bf16 weight copies autocast saves, the queue copies the
    loss saves)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)  # the momentum target
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    # fp32 weights + gradients + DDP buckets + momentum; target weights
    weights = 4 * 4 * trainable + 4 * frozen + max(0.0, intercept)
    loss = 0
    if cfg.MODEL.META_ARCHITECTURE == "DetCon" and cfg.MODEL.DETCON.CROSS_IMAGE_NEGATIVES:
        # the keys of both views of the whole global batch on every GPU, bytes per element:
        # DetCon-B gathers the target projections as they come (fp16/bf16 under AMP) and keeps
        # them normalised (float32 on CUDA: autocast runs norm in float32); DetCon-S gathers in
        # float32, normalises, and holds gradients of both; under AMP the chunked log-sum-exp
        # also keeps a copy in the matmul dtype while it runs
        keys = 2 * cfg.SOLVER.IMS_PER_BATCH * cfg.MODEL.DETCON.NUM_MASKS * cfg.MODEL.SSL.PROJ_DIM
        half_copy = 2 if amp else 0
        per_key = 4 + 4 + 8 + half_copy if cfg.MODEL.DETCON.VARIANT == "S" else (2 if amp else 4) + 4 + half_copy
        # one chunk of logits (LOGIT_CHUNK_ELEMENTS): matmul-dtype output, its float32 copy and the
        # backward's softmax weights, at most 12 bytes per element
        loss = keys * per_key + 12 * LOGIT_CHUNK_ELEMENTS["cuda"]
    return {"trainable": trainable, "frozen": frozen, "bytes": weights + buffers + loss}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def probe_rss(name: str, batch_size: int) -> None:
    """(--probe) Peak-RSS increase of one forward + backward, after a warm-up step
    (gradients allocated, every kernel loaded); Linux's peak RSS is reset in between."""
    torch.set_num_threads(1)
    cfg, model, data = build(name, (batch_size,))
    batch = data[batch_size]
    for warm_up in (True, False):
        model.zero_grad(set_to_none=True)
        if not warm_up:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            before = _status_kib("VmRSS")
        with EventStorage(0):
            losses = model(batch)
        sum(losses.values()).backward()
        del losses
    print((_status_kib("VmHWM") - before) * 1024)


def rss_bytes(name: str, batch_size: int) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, __file__, "--probe", name, str(batch_size)], env=env,
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def gpus_needed(global_batch: int, static: float, per_image: float) -> tuple[int, int]:
    """(fewest GPUs W dividing the global batch that fit, images per GPU at W)."""
    for world in range(1, global_batch + 1):
        if global_batch % world == 0 and static + global_batch // world * per_image <= USABLE * GPU_BYTES:
            return world, global_batch // world
    return 0, 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs=2, default=(2, 4), help="two small per-process batches")
    parser.add_argument("--rss", action="store_true", help="also peak RSS of forward + backward in subprocesses")
    parser.add_argument("--configs", nargs="*", default=CONFIGS)
    parser.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        return probe_rss(args.probe[0], int(args.probe[1]))
    torch.set_num_threads(1)
    ensure_caches()
    small, large = args.batches
    print(f"paper view sizes, CPU, torch {torch.__version__}; per-image = slope between batches {small} and {large}; "
          f"AMP = bf16 autocast; 80 GB GPU, {USABLE:.0%} usable")
    rows = []
    for name in args.configs:
        cfg, model, data = build(name, (small, large))
        row = {"name": name.replace(".yaml", ""), "global": cfg.SOLVER.IMS_PER_BATCH, "amp": cfg.SOLVER.AMP.ENABLED}
        for amp in (False, True):
            m_small, m_large = (saved_bytes(model, data[b], amp) for b in (small, large))
            slope = (m_large - m_small) / (large - small)
            row[amp] = {"per_image": slope, "intercept": m_small - small * slope, "ratio": m_large / m_small}
        if args.rss:
            r_small, r_large = (rss_bytes(name, b) for b in (small, large))
            row["rss_per_image"] = (r_large - r_small) / (large - small)
            row["overhead"] = row["rss_per_image"] / row[False]["per_image"] - 1
        row["static"] = static_bytes(cfg, model, row["amp"], row[row["amp"]]["intercept"])
        rows.append(row)
        print(f"  {name}: fp32 {row[False]['per_image'] / MB:.0f} MB/img, AMP {row[True]['per_image'] / MB:.0f} MB/img"
              + (f", peak RSS {row['rss_per_image'] / MB:.0f} MB/img" if args.rss else ""), flush=True)
        del model, data

    header = ("| config | global batch | AMP in config | trainable / target params | static GB / GPU | "
              "saved MB / image fp32 | saved MB / image AMP | m(large)/m(small) fp32 | intercept MB fp32 / AMP | "
              + ("peak-RSS MB / image fp32 | backward overhead | " if args.rss else "")
              + "images / GPU at 80 GB | GPUs needed at 80 GB |")
    print("\n" + header)
    print("|---" * (header.count("|") - 1) + "|")
    for row in rows:
        run = row[row["amp"]]
        overhead = max(0.0, row.get("overhead", DEFAULT_BACKWARD_OVERHEAD))
        per_image = run["per_image"] * (1 + overhead)
        world, local = gpus_needed(row["global"], row["static"]["bytes"], per_image)
        fp32 = row[False]
        print(f"| {row['name']} | {row['global']} | {'on' if row['amp'] else 'off'} | "
              f"{row['static']['trainable'] / 1e6:.1f}M / {row['static']['frozen'] / 1e6:.1f}M | "
              f"{row['static']['bytes'] / GB:.2f} | {fp32['per_image'] / MB:.0f} | {row[True]['per_image'] / MB:.0f} | "
              f"{fp32['ratio']:.2f} | {fp32['intercept'] / MB:.0f} / {row[True]['intercept'] / MB:.0f} | "
              + (f"{row['rss_per_image'] / MB:.0f} | {overhead:+.0%} | " if args.rss else "")
              + f"{math.floor((USABLE * GPU_BYTES - row['static']['bytes']) / per_image)} | "
              f"{world} ({local} images each) |")


if __name__ == "__main__":
    main()
