#!/usr/bin/env python
"""GPU smoke check (a few minutes on one GPU): the CUDA code paths soco_d2 relies
on, run once, with a report to paste into BENCHMARKS.md.

1. the stack: torch / torchvision builds and their CUDA versions, cuDNN, GPUs;
2. torchvision's ``roi_align`` (forward and backward) and ``nms`` on CUDA against
   the CPU, with the errors;
3. DetCon's loss at the paper's 512 images per GPU (N = 4096 gathered images):
   peak memory of forward + backward against one fp32 (B, M, N, M) tensor;
4. one AMP training step of every paper config through the trainer's own step
   (``soco_d2.engine.steps.StepTrainer`` in the precision ``SOLVER.AMP.DTYPE auto``
   resolves to: bf16 where the GPU runs it natively, else fp16 with a GradScaler)
   at a realistic per-GPU batch: images/s and peak memory;
5. with two GPUs: one DDP (NCCL) step of SoCo_FPN and DetCon-S on 2 GPUs, checking
   both ranks hold the same weights afterwards (SyncBN, gathers, queue broadcast).

On a machine without CUDA it runs what it can on the CPU (the step of every
config at a tiny batch, as a check of this script's code path: the numbers say
nothing about a GPU; about 10 minutes on 2 cores, bf16 is slow on CPUs;
``--skip-steps`` leaves it out) and prints why each CUDA part is skipped.

    python bench/gpu_smoke.py                  # GPU: batch 64 per config
    python bench/gpu_smoke.py --batch 128 --steps 5
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import soco_d2  # noqa: E402  (compat shims first)
import torch  # noqa: E402
import torchvision  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from torchvision.ops import nms, roi_align  # noqa: E402

from bench_pretrain import make_batch  # noqa: E402
from soco_d2.data import build_ssl_mapper, get_pretrain_dicts  # noqa: E402
from soco_d2.engine.solver import build_pretrain_optimizer  # noqa: E402
from soco_d2.engine.steps import StepTrainer, cuda_runs_bf16, resolve_precision  # noqa: E402
from soco_d2.modeling.losses import detcon_loss_terms  # noqa: E402
from soco_d2.proposals import CacheWriter  # noqa: E402

CONFIGS = [
    "byol_r50.yaml", "mocov2_r50.yaml", "densecl_r50.yaml", "detcon_b_r50.yaml", "detcon_b_r50_fpn.yaml",
    "detcon_s_r50.yaml", "soco_r50_c4.yaml", "soco_r50_fpn.yaml", "soco_star_r50_fpn.yaml",
]
DDP_CONFIGS = ["soco_r50_fpn.yaml", "detcon_s_r50.yaml"]
GIB = 1024**3


def cuda() -> bool:
    return torch.cuda.is_available()


def amp_dtype(device: str) -> torch.dtype:
    """The autocast dtype of ``SOLVER.AMP.DTYPE auto`` (``soco_d2.engine.steps``)."""
    if device == "cpu" or cuda_runs_bf16():
        return torch.bfloat16
    return torch.float16


# --------------------------------------------------------------------------- 1. stack


def stack_report() -> list[str]:
    from torchvision.extension import _check_cuda_version

    tv_cuda = _check_cuda_version()
    lines = [
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}), torchvision {torchvision.__version__} "
        f"(ops built for CUDA {tv_cuda // 1000}.{tv_cuda % 1000 // 10})" if tv_cuda > 0 else
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}), torchvision {torchvision.__version__} (CPU ops)",
    ]
    if cuda():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines.append(f"- cuDNN {torch.backends.cudnn.version()}, {len(names)} GPU(s): {', '.join(sorted(set(names)))}, "
                     f"native bf16 {'yes' if cuda_runs_bf16() else 'no'}")
    else:
        lines.append("- no CUDA device: the CUDA parts below are skipped")
    return lines


# --------------------------------------------------------------------------- 2. ops


def ops_report() -> list[str]:
    if not cuda():
        return ["- roi_align / nms on CUDA vs CPU: skipped (no CUDA device)"]
    g = torch.Generator().manual_seed(0)
    features = torch.randn(4, 64, 56, 56, generator=g)
    xy = torch.rand(512, 2, generator=g) * 180
    wh = torch.rand(512, 2, generator=g) * 40 + 1
    boxes = torch.cat([torch.randint(0, 4, (512, 1), generator=g).float(), xy, xy + wh], dim=1)
    out = {}
    for device in ("cpu", "cuda"):
        x = features.to(device).requires_grad_(True)
        pooled = roi_align(x, boxes.to(device), output_size=7, spatial_scale=0.25, sampling_ratio=0, aligned=True)
        (pooled * torch.linspace(-1, 1, pooled.numel(), device=device).view_as(pooled)).sum().backward()
        out[device] = (pooled.detach().cpu(), x.grad.cpu())
    fwd = (out["cuda"][0] - out["cpu"][0]).abs().max().item()
    bwd = (out["cuda"][1] - out["cpu"][1]).abs().max().item() / out["cpu"][1].abs().max().item()
    with torch.autocast("cuda", dtype=amp_dtype("cuda")):
        half = roi_align(features.cuda().to(amp_dtype("cuda")), boxes.cuda(), 7, 0.25, 0, True)
    amp_err = (half.float().cpu() - out["cpu"][0]).abs().max().item()
    scores = torch.rand(2000, generator=g)
    xy = torch.rand(2000, 2, generator=g) * 500
    nms_boxes = torch.cat([xy, xy + torch.rand(2000, 2, generator=g) * 100 + 1], dim=1)
    keep_cpu, keep_cuda = nms(nms_boxes, scores, 0.5), nms(nms_boxes.cuda(), scores.cuda(), 0.5).cpu()
    return [
        f"- roi_align (512 boxes, 7x7, aligned): forward max |CUDA - CPU| {fwd:.2e}, backward max relative "
        f"{bwd:.2e} (atomic adds: not bitwise), under {amp_dtype('cuda')} autocast max |diff| {amp_err:.2e} "
        f"({half.dtype} out)",
        f"- nms (2000 boxes, IoU 0.5): {len(keep_cuda)} kept on CUDA, {len(keep_cpu)} on CPU, "
        f"{'identical' if torch.equal(keep_cpu, keep_cuda) else 'DIFFERENT'}",
    ]


# --------------------------------------------------------------------------- 3. DetCon loss


def detcon_loss_report(local: int = 512, num_masks: int = 16, gathered: int = 4096, dim: int = 256) -> list[str]:
    if not cuda():
        return ["- DetCon loss at 512 images per GPU: skipped (no CUDA device; CPU: tests/test_detcon_memory.py)"]
    g = torch.Generator(device="cuda").manual_seed(0)
    p1, p2 = (torch.randn(local, num_masks, dim, device="cuda", generator=g).requires_grad_(True) for _ in range(2))
    t1, t2 = (torch.randn(gathered, num_masks, dim, device="cuda", generator=g) for _ in range(2))
    ids1, ids2 = (torch.randint(0, 8, (local, num_masks), device="cuda", generator=g) for _ in range(2))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    with torch.autocast("cuda", dtype=amp_dtype("cuda")):
        loss = sum(detcon_loss_terms(p1, p2, t1, t2, ids1, ids2, target_offset=0))
    loss.backward()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    unit = local * num_masks * gathered * num_masks * 4
    peak = torch.cuda.max_memory_allocated() - base
    return [f"- DetCon loss forward + backward, B {local}, M {num_masks}, N {gathered}, D {dim}, AMP: "
            f"{seconds * 1e3:.0f} ms, peak +{peak / GIB:.2f} GiB = {peak / unit:.2f} x one fp32 (B, M, N, M) "
            f"tensor ({unit / GIB:.1f} GiB)"]


# --------------------------------------------------------------------------- 4. steps


def random_box_cache(path: str) -> str:
    rng = np.random.default_rng(0)
    header = {"method": "gpu_smoke", "generator": {}, "versions": {}, "source": "bench/gpu_smoke.py"}
    with CacheWriter(path, "boxes", header) as boxes:
        for d in get_pretrain_dicts("demo_images"):
            h, w = d["height"], d["width"]
            size = rng.uniform(0.1, 0.8, (30, 2)) * (w, h)
            x0 = rng.uniform(0, 1, (30, 2)) * ((w, h) - size)
            boxes.add_boxes(d["image_id"], h, w, np.round(np.concatenate([x0, x0 + size], axis=1)))
        boxes.commit()
    return path


def smoke_cfg(name: str, device: str, batch: int, box_cache: str, sync_bn: bool = False):
    cfg = soco_d2.get_pretrain_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", name))
    cfg.MODEL.DEVICE = device
    if not sync_bn:  # one process: SyncBN computes BN's statistics
        for node, key in ((cfg.MODEL.RESNETS, "NORM"), (cfg.MODEL.FPN, "NORM"), (cfg.MODEL.ROI_BOX_HEAD, "NORM"),
                          (cfg.MODEL.SSL, "HEAD_NORM")):
            if node[key] == "SyncBN":
                node[key] = "BN"
    cfg.PROPOSALS.BOX_CACHE = box_cache
    cfg.MODEL.DETCON.MASK_SOURCE = "grid"  # masks' content does not change cost; no mask cache needed
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.DTYPE = True, "auto"
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


class _StepOnBatch(StepTrainer):
    """The trainer's step on a batch given per call; keeps the loss instead of writing metrics."""

    def __init__(self, model, optimizer, precision):
        super().__init__(model, self._batches(), optimizer, precision=precision)
        self.batch = self.loss = None

    def _batches(self):
        while True:
            yield self.batch

    def _write_metrics(self, loss_dict, data_time, prefix=""):
        self.loss = sum(v.detach() for v in loss_dict.values())


class Step:
    """One optimizer step as ``tools/pretrain_net.py`` runs it (``StepTrainer``: autocast,
    GradScaler for fp16), then the momentum update."""

    def __init__(self, cfg, model):
        self.model = model
        self.precision = resolve_precision(cfg)
        self.trainer = _StepOnBatch(model, build_pretrain_optimizer(cfg, getattr(model, "module", model)),
                                    self.precision)

    def __call__(self, batch) -> float:
        self.trainer.batch = batch
        with EventStorage(0):
            self.trainer.run_step()
        model = getattr(self.model, "module", self.model)  # DDP wraps it
        if hasattr(model, "momentum_update"):
            model.momentum_update(0.99)
        return float(self.trainer.loss)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_report(device: str, batch: int, steps: int, box_cache: str) -> list[str]:
    dicts = get_pretrain_dicts("demo_images")
    precision = resolve_precision(smoke_cfg(CONFIGS[0], device, batch, box_cache))
    rows = [f"one training step per paper config, {precision.describe()}, batch {batch}, {steps} timed step(s) "
            f"after one warm-up" + ("" if device != "cpu" else " (CPU: a check of this script, not a GPU number)"),
            "", "| config | img/s | peak memory GiB | loss |", "|---|---|---|---|"]
    torch.backends.cudnn.benchmark = True
    for name in CONFIGS:
        cfg = smoke_cfg(name, device, batch, box_cache)
        data = make_batch(build_ssl_mapper(cfg), dicts, batch)
        torch.manual_seed(0)
        model = build_model(cfg).train()
        step = Step(cfg, model)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        loss = step(data)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            loss = step(data)
        synchronize(device)
        rate = batch * steps / (time.perf_counter() - start)
        peak = f"{torch.cuda.max_memory_allocated() / GIB:.1f}" if device.startswith("cuda") else "-"
        rows.append(f"| {name.replace('.yaml', '')} | {rate:.3g} | {peak} | {loss:.4f} |")
        print(rows[-1], flush=True)
        del model, step, data
    return rows


# --------------------------------------------------------------------------- 5. DDP


def _ddp_worker(configs, batch, box_cache, result_dir):
    from detectron2.utils import comm

    from soco_d2.engine.trainer import no_forward_buffer_sync, wrap_ddp

    dicts = get_pretrain_dicts("demo_images")
    out = {}
    for name in configs:
        cfg = smoke_cfg(name, "cuda", batch, box_cache, sync_bn=True)
        data = make_batch(build_ssl_mapper(cfg), dicts[comm.get_rank():] + dicts[:comm.get_rank()], batch)
        torch.manual_seed(comm.get_rank())  # DDP must make the weights equal
        model = wrap_ddp(build_model(cfg).train(), **no_forward_buffer_sync())
        step = Step(cfg, model)
        step(data)
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss = step(data)
        torch.cuda.synchronize()
        checksum = sum(p.detach().double().sum().item() for p in model.module.parameters())
        out[name] = (checksum, time.perf_counter() - start, loss)
    torch.save(out, os.path.join(result_dir, f"rank{comm.get_rank()}.pt"))


def ddp_report(batch: int, box_cache: str) -> list[str]:
    if not cuda() or torch.cuda.device_count() < 2:
        return [f"- 2-GPU DDP: skipped ({torch.cuda.device_count() if cuda() else 0} CUDA device(s))"]
    from soco_d2.engine.launch import launch

    with tempfile.TemporaryDirectory(prefix="gpu_smoke_ddp_") as result_dir:
        launch(_ddp_worker, 2, args=(DDP_CONFIGS, batch, box_cache, result_dir), use_cuda=True)
        ranks = [torch.load(os.path.join(result_dir, f"rank{r}.pt")) for r in range(2)]
    lines = []
    for name in DDP_CONFIGS:
        (c0, t0, l0), (c1, t1, l1) = ranks[0][name], ranks[1][name]
        same = abs(c0 - c1) <= 1e-9 * max(1.0, abs(c0))
        lines.append(f"- 2-GPU DDP {name.replace('.yaml', '')}, {batch} images per GPU: step {max(t0, t1) * 1e3:.0f} ms "
                     f"({2 * batch / max(t0, t1):.0f} img/s), weights {'identical' if same else 'DIFFERENT'} on both "
                     f"ranks after two steps, losses {l0:.4f} / {l1:.4f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=0, help="images per GPU (default 64; CPU: 2)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per config (default 3; CPU: 1)")
    parser.add_argument("--skip-steps", action="store_true", help="only the stack, ops and loss checks")
    args = parser.parse_args()
    device = "cuda" if cuda() else "cpu"
    batch = args.batch or (64 if cuda() else 2)
    steps = args.steps or (3 if cuda() else 1)
    start = time.perf_counter()
    report = ["### gpu_smoke", ""] + stack_report() + ops_report() + detcon_loss_report()
    print("\n".join(report), flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_smoke_") as tmp:
        box_cache = random_box_cache(os.path.join(tmp, "boxes.pcache"))
        if not args.skip_steps:
            report += [""] + step_report(device, batch, steps, box_cache) + [""]
        report += ddp_report(batch, box_cache)
    report.append(f"\n(bench/gpu_smoke.py --batch {batch} --steps {steps}: {time.perf_counter() - start:.0f} s)")
    print("\n\n" + "\n".join(report))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
