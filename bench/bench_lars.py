#!/usr/bin/env python
"""LARS step time: ``torch._foreach_*`` kernels (soco_d2.engine.solver.LARS)
against the per-parameter Python loop it replaced, on the parameter groups of a
paper config's model, per CPU-second (``time.process_time``, 1 thread) of
alternating processes (one optimizer per process: the two would otherwise share,
and skew, malloc's state), so other load on the machine barely moves the ratio.

    python bench/bench_lars.py                         # SoCo_FPN R50, and at 1/8 width (overhead-bound)
    python bench/bench_lars.py --device cuda --steps 50

The R50 step moves ~25M parameters several times and is memory-bound on a CPU;
the 1/8-width model has the same tensors with little data each and shows the
per-tensor overhead, which is what a GPU step is made of.  The physical limit
printed is the bytes a step must touch (read param, grad, momentum; write param,
momentum) at the bandwidth of one large ``torch.add``.
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

import soco_d2  # noqa: E402  (compat shims first)
import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from soco_d2.engine.solver import LARS, lars_param_groups  # noqa: E402


class LoopLARS(torch.optim.Optimizer):
    """The baseline: soco_d2's LARS before the foreach kernels, one parameter at a time."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.001, eps=0.0, lars=True):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps, lars=lars))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["weight_decay"] != 0:
                    grad = grad.add(param, alpha=group["weight_decay"])
                if group["lars"]:
                    w_norm, g_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(grad)
                    ratio = group["eta"] * w_norm / (g_norm + group["eps"])
                    grad = grad * torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
                state = self.state[param]
                buf = state.get("momentum_buffer")
                if buf is None:
                    state["momentum_buffer"] = grad.detach().clone()
                else:
                    buf.mul_(group["momentum"]).add_(grad)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])


def model_params(config: str, device: str, narrow: bool) -> list[torch.nn.Parameter]:
    cfg = soco_d2.get_pretrain_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", config))
    cfg.MODEL.DEVICE = device
    cfg.MODEL.RESNETS.NORM = cfg.MODEL.FPN.NORM = cfg.MODEL.ROI_BOX_HEAD.NORM = cfg.MODEL.SSL.HEAD_NORM = "BN"
    if narrow:  # the same tensors, 1/8 - 1/128 of the data each
        cfg.MODEL.RESNETS.STEM_OUT_CHANNELS, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 8, 32
        cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 8
        cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.ROI_BOX_HEAD.CONV_DIM, cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16, 16, 32
        cfg.MODEL.SSL.PROJ_HIDDEN_DIM, cfg.MODEL.SSL.PROJ_DIM, cfg.MODEL.SSL.PRED_HIDDEN_DIM = 32, 16, 32
    torch.manual_seed(0)
    return build_model(cfg)


def timed_steps(optimizer, params, grads, steps: int, device: str) -> float:
    """CPU-seconds (CPU) or wall seconds (CUDA, synchronised) per step."""
    for p, g in zip(params, grads):
        p.grad = g
    clock = time.process_time if device == "cpu" else time.perf_counter
    if device != "cpu":
        torch.cuda.synchronize()
    start = clock()
    for _ in range(steps):
        optimizer.step()
    if device != "cpu":
        torch.cuda.synchronize()
    return (clock() - start) / steps


def bandwidth_limit_s(params, device: str) -> float:
    """Seconds to move a step's minimum bytes (5 passes over the parameters) at the
    bandwidth of one large in-place add (2 reads, 1 write) measured here."""
    n = sum(p.numel() for p in params)
    a, b = torch.randn(n, device=device), torch.randn(n, device=device)
    clock = time.process_time if device == "cpu" else time.perf_counter
    times = []
    for _ in range(5):
        if device != "cpu":
            torch.cuda.synchronize()
        start = clock()
        a.add_(b)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(clock() - start)
    bytes_per_s = 3 * n * 4 / min(times)
    return 5 * n * 4 / bytes_per_s


def measure(args) -> None:
    """One optimizer on one model in this process (``--only``): prints seconds per step."""
    model = model_params(args.config, args.device, args.narrow)
    groups = lars_param_groups(model, weight_decay=1e-5)
    params = [p for g in groups for p in g["params"]]
    gen = torch.Generator(device=args.device).manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen, device=args.device) * 1e-3 for p in params]
    kind = LARS if args.only == "foreach" else LoopLARS
    optimizer = kind(groups, lr=0.1, momentum=0.9, weight_decay=1e-5, eta=1e-3, eps=1e-8)
    timed_steps(optimizer, params, grads, 2, args.device)  # momentum buffers exist: the steady-state step
    per_step = timed_steps(optimizer, params, grads, args.steps, args.device)
    limit = bandwidth_limit_s(params, args.device)
    print(len(params), sum(p.numel() for p in params), per_step, limit)


def main() -> None:
    torch.set_num_threads(1)  # per CPU-second: no idle OpenMP threads spinning on a shared machine
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="soco_r50_fpn.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per process")
    parser.add_argument("--rounds", type=int, default=3, help="alternating loop / foreach processes (median)")
    parser.add_argument("--only", choices=["loop", "foreach"], help=argparse.SUPPRESS)
    parser.add_argument("--narrow", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        return measure(args)
    print(f"LARS step, {args.config}, device {args.device}, torch {torch.__version__}, 1 thread, "
          f"median of {args.rounds} alternating processes per optimizer, {args.steps} steps each "
          f"({'CPU' if args.device == 'cpu' else 'wall'} seconds per step)")
    print("| model | tensors | parameters | loop ms / step | foreach ms / step | speed-up | bandwidth limit ms |")
    print("|---|---|---|---|---|---|---|")
    for narrow in (False, True):
        times = {"loop": [], "foreach": []}
        for _ in range(args.rounds):
            for kind in ("loop", "foreach"):  # one process each: malloc state is not shared
                cmd = [sys.executable, __file__, "--only", kind, "--config", args.config, "--device", args.device,
                       "--steps", str(args.steps)] + (["--narrow"] if narrow else [])
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
                tensors, numel, per_step, limit = int(out[-4]), int(out[-3]), float(out[-2]), float(out[-1])
                times[kind].append(per_step)
        t_loop, t_foreach = statistics.median(times["loop"]), statistics.median(times["foreach"])
        name = args.config.replace(".yaml", "") + (", 1/8 width" if narrow else "")
        print(f"| {name} | {tensors} | {numel / 1e6:.2f}M | {1e3 * t_loop:.2f} | {1e3 * t_foreach:.2f} | "
              f"{t_loop / t_foreach:.2f}x | {1e3 * limit:.2f} |")


if __name__ == "__main__":
    main()
