"""LARS (groups, exclusions, one step by hand), the lr scaling, the warmup-cosine
schedules, and the epochs -> iterations rule (a command-line MAX_ITER wins)."""
import argparse
import math

import pytest
import soco_d2  # noqa: F401
import torch
from detectron2.modeling import build_model
from detectron2.solver.lr_scheduler import LRMultiplier

from engine_utils import one_torch_thread, tiny_cfg  # noqa: F401  (autouse fixture)
from soco_d2.engine.pretrain import apply_epoch_schedule, prepare_pretrain
from soco_d2.engine.solver import (
    LARS,
    build_pretrain_lr_scheduler,
    build_pretrain_optimizer,
    lars_param_groups,
    scaled_base_lr,
)


@pytest.fixture(scope="module")
def byol_model(tmp_path_factory):
    torch.manual_seed(0)
    return build_model(tiny_cfg(str(tmp_path_factory.mktemp("byol"))))


def _ids(params):
    return {id(p) for p in params}


# ------------------------------------------------------------------ LARS groups


def test_lars_groups_exclude_every_1d_param_and_the_target(byol_model, tmp_path):
    cfg = tiny_cfg(str(tmp_path), SOLVER__WEIGHT_DECAY=1e-5)
    opt = build_pretrain_optimizer(cfg, byol_model)
    assert isinstance(opt, LARS)
    lars_groups = [g for g in opt.param_groups if g["lars"]]
    plain_groups = [g for g in opt.param_groups if not g["lars"]]
    assert len(lars_groups) == 1 and len(plain_groups) == 1
    assert lars_groups[0]["weight_decay"] == 1e-5 and plain_groups[0]["weight_decay"] == 0.0
    scaled, excluded = _ids(lars_groups[0]["params"]), _ids(plain_groups[0]["params"])

    named = dict(byol_model.named_parameters())
    online = {n: p for n, p in named.items() if not n.startswith("target.")}
    target = {n: p for n, p in named.items() if n.startswith("target.")}
    assert target, "BYOL has a momentum target"
    # every trainable parameter is in exactly one group; no target parameter is
    assert scaled | excluded == _ids(online.values()) and not scaled & excluded
    assert not _ids(target.values()) & (scaled | excluded)
    for name, p in online.items():
        assert (id(p) in excluded) == (p.ndim == 1), name
    # biases and norm weights of backbone, projector and predictor are all excluded
    for pattern in ("backbone.stem.conv1.norm.weight", "backbone.res5.1.conv2.norm.bias",
                    "projector.", "predictor."):
        ones = [n for n, p in online.items() if n.startswith(pattern) and p.ndim == 1]
        assert ones and all(id(online[n]) in excluded for n in ones), pattern
    assert all(id(online[n]) in scaled for n in online if n.endswith("conv1.weight"))


def test_lars_without_exclusion_and_sgd_keeps_detectron2(byol_model, tmp_path):
    groups = lars_param_groups(byol_model, 1e-4, exclude_1d=False)
    assert len(groups) == 1 and groups[0]["lars"] and groups[0]["weight_decay"] == 1e-4
    # SGD: detectron2's build_optimizer (WEIGHT_DECAY_NORM = WEIGHT_DECAY -> wd on every param)
    cfg = tiny_cfg(str(tmp_path), SOLVER__OPTIMIZER="SGD", SOLVER__WEIGHT_DECAY=1e-4,
                   SOLVER__WEIGHT_DECAY_NORM=1e-4, SOLVER__BASE_LR=0.03)
    opt = build_pretrain_optimizer(cfg, byol_model)
    assert type(opt) is torch.optim.SGD
    assert {g["weight_decay"] for g in opt.param_groups} == {1e-4}
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(
        1 for p in byol_model.parameters() if p.requires_grad)
    assert {g["lr"] for g in opt.param_groups} == {0.03}


def test_scaled_lr_and_gradient_clipping(tmp_path):
    cfg = tiny_cfg(str(tmp_path), SOLVER__BASE_LR=1.0, SOLVER__IMS_PER_BATCH=512, SOLVER__REFERENCE_BATCH_SIZE=256)
    assert scaled_base_lr(cfg) == 2.0
    model = torch.nn.Linear(3, 2)
    assert build_pretrain_optimizer(cfg, model).param_groups[0]["lr"] == 2.0
    cfg = tiny_cfg(str(tmp_path), SOLVER__CLIP_GRADIENTS__ENABLED=True)
    opt = build_pretrain_optimizer(cfg, model)
    assert isinstance(opt, LARS) and type(opt) is not LARS  # detectron2's clipping subclass


def test_lars_step_matches_hand_computation():
    torch.manual_seed(0)
    f64 = torch.float64  # exact enough to compare parameter differences
    w = torch.nn.Parameter(torch.tensor([[3.0, -4.0], [0.0, 12.0]], dtype=f64))  # ||w|| = 13
    b = torch.nn.Parameter(torch.tensor([0.5, -1.0], dtype=f64))
    zero = torch.nn.Parameter(torch.zeros(2, 2, dtype=f64))  # ||w|| = 0 -> ratio 1
    lr, wd, eta, eps, mom = 0.5, 0.01, 0.001, 1e-8, 0.9
    opt = LARS([{"params": [w, zero], "weight_decay": wd, "lars": True},
                {"params": [b], "weight_decay": 0.0, "lars": False}],
               lr=lr, momentum=mom, weight_decay=wd, eta=eta, eps=eps)
    grads = [torch.tensor([[1.0, 2.0], [2.0, 0.0]], dtype=f64), torch.tensor([0.3, 0.4], dtype=f64),
             torch.ones(2, 2, dtype=f64)]
    w0, b0, z0 = w.detach().clone(), b.detach().clone(), zero.detach().clone()

    def expected_update(p, g, lars):
        g = g + wd * p if lars else g
        if lars and p.norm() > 0 and g.norm() > 0:
            g = g * (eta * p.norm() / (g.norm() + eps))
        return g

    for p, g in zip((w, b, zero), grads):
        p.grad = g.clone()
    opt.step()
    uw, ub = expected_update(w0, grads[0], True), grads[1]
    torch.testing.assert_close(w.detach(), w0 - lr * uw, rtol=0, atol=1e-12)
    torch.testing.assert_close(b.detach(), b0 - lr * ub, rtol=0, atol=1e-12)  # no wd, no trust ratio
    torch.testing.assert_close(zero.detach(), z0 - lr * (grads[2] + wd * z0), rtol=0, atol=1e-12)
    # hand numbers for w: g + wd w = [[1.03, 1.96], [2, .12]], ratio = 1e-3 * 13 / ||.||
    g = torch.tensor([[1.03, 1.96], [2.0, 0.12]], dtype=f64)
    ratio = 0.001 * 13.0 / (math.sqrt(1.03**2 + 1.96**2 + 4 + 0.12**2) + eps)
    torch.testing.assert_close(w0 - w.detach(), lr * g * ratio, rtol=1e-10, atol=1e-14)

    # second step: momentum buffer mu = 0.9 mu + g'
    w1 = w.detach().clone()
    w.grad = grads[0].clone()
    b.grad = grads[1].clone()
    zero.grad = None
    opt.step()
    u2 = expected_update(w1, grads[0], True)
    torch.testing.assert_close(w.detach(), w1 - lr * (mom * uw + u2), rtol=0, atol=1e-12)
    torch.testing.assert_close(b.detach(), b0 - lr * ub - lr * (mom * ub + ub), rtol=0, atol=1e-12)


def reference_lars_step(group_params, state, lr, momentum, eta, eps):
    """LARS one parameter at a time, as the docstring states it (the form before
    the foreach kernels): group_params [(params, weight_decay, lars)]."""
    for params, wd, lars in group_params:
        for p in params:
            if p.grad is None:
                continue
            g = p.grad + wd * p if wd else p.grad
            if lars:
                w_norm, g_norm = p.norm(), g.norm()
                if w_norm > 0 and g_norm > 0:
                    g = g * (eta * w_norm / (g_norm + eps))
            if id(p) in state:
                state[id(p)] = momentum * state[id(p)] + g
            else:
                state[id(p)] = g.clone()
            p.sub_(lr * state[id(p)])


def test_foreach_lars_equals_the_per_parameter_loop(byol_model, tmp_path):
    """Three steps on the BYOL model's real groups (LARS + excluded 1-D), with random
    gradients, a parameter without gradient in step 1 (its momentum starts later) and a
    zero gradient (trust ratio 1): same parameters and momentum to float32 tolerance."""
    cfg = tiny_cfg(str(tmp_path), SOLVER__WEIGHT_DECAY=1e-4, SOLVER__LARS_EPS=1e-8)
    model = byol_model
    opt = build_pretrain_optimizer(cfg, model)
    params = [p for g in opt.param_groups for p in g["params"]]
    assert len(params) > 50 and {g["lars"] for g in opt.param_groups} == {True, False}
    start = [p.detach().clone() for p in params]
    reference = [p.detach().clone() for p in params]
    ref_of = dict(zip(map(id, params), reference))
    ref_groups = [([ref_of[id(p)] for p in g["params"]], g["weight_decay"], g["lars"]) for g in opt.param_groups]
    state, gen = {}, torch.Generator().manual_seed(0)
    try:
        for step in range(3):
            for i, (p, r) in enumerate(zip(params, reference)):
                grad = torch.randn(p.shape, generator=gen) * 10 ** float(torch.empty(()).uniform_(-4, 0, generator=gen))
                if i == 0:
                    grad = None if step == 0 else grad  # joins at step 2
                elif i == 1:
                    grad = torch.zeros_like(p)
                p.grad, r.grad = grad, None if grad is None else grad.clone()
            opt.step()
            reference_lars_step(ref_groups, state, opt.param_groups[0]["lr"], cfg.SOLVER.MOMENTUM,
                                cfg.SOLVER.LARS_ETA, cfg.SOLVER.LARS_EPS)
            for p, r in zip(params, reference):
                torch.testing.assert_close(p.detach(), r, rtol=1e-6, atol=1e-7)
                if id(r) in state:
                    torch.testing.assert_close(opt.state[p]["momentum_buffer"], state[id(r)], rtol=1e-5, atol=1e-9)
                else:
                    assert "momentum_buffer" not in opt.state[p]
        assert all(not torch.equal(p, s) for p, s in zip(params[1:], start[1:]))  # every parameter moved
    finally:
        with torch.no_grad():  # the module-scoped model goes back to its initial weights
            for p, s in zip(params, start):
                p.copy_(s)
                p.grad = None


# ------------------------------------------------------------------ schedules


def _lrs(cfg, n=None):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=scaled_base_lr(cfg))
    sched = build_pretrain_lr_scheduler(cfg, opt)
    assert isinstance(sched, LRMultiplier)
    values = []
    for _ in range((n or cfg.SOLVER.MAX_ITER) + 1):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return values


def test_warmup_cosine_to_end_soco(tmp_path):
    # SoCo: lr = 1.0 x 512 / 256, warmup from lr/100 over 10 "epochs" (here 10 iterations), cosine to 1e-6
    cfg = tiny_cfg(str(tmp_path), SOLVER__BASE_LR=1.0, SOLVER__IMS_PER_BATCH=512, SOLVER__REFERENCE_BATCH_SIZE=256,
                   SOLVER__MAX_ITER=100, SOLVER__WARMUP_ITERS=10, SOLVER__WARMUP_FACTOR=0.01,
                   SOLVER__COSINE_END_LR=1e-6)
    lr, end = 2.0, 1e-6
    lrs = _lrs(cfg)
    assert lrs[0] == pytest.approx(lr * 0.01)
    assert lrs[5] == pytest.approx(lr * (0.01 + 0.99 * 0.5))
    assert lrs[10] == pytest.approx(lr)
    assert lrs[55] == pytest.approx(end + (lr - end) * 0.5)  # cosine half-way over the remaining 90
    assert lrs[100] == pytest.approx(end, abs=1e-12)
    assert lrs[99] == pytest.approx(end + (lr - end) * (1 + math.cos(math.pi * 89 / 90)) / 2)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_warmup_from_zero_and_no_warmup(tmp_path):
    cfg = tiny_cfg(str(tmp_path), SOLVER__BASE_LR=0.2, SOLVER__MAX_ITER=40, SOLVER__WARMUP_ITERS=4,
                   SOLVER__WARMUP_FACTOR=0.0, SOLVER__COSINE_END_LR=0.0)
    lrs = _lrs(cfg)
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.2)
    assert lrs[40] == pytest.approx(0.0, abs=1e-12)
    cfg = tiny_cfg(str(tmp_path), SOLVER__BASE_LR=0.2, SOLVER__MAX_ITER=40, SOLVER__WARMUP_ITERS=0)
    lrs = _lrs(cfg)
    assert lrs[0] == pytest.approx(0.2) and lrs[20] == pytest.approx(0.1 + 0.5e-6)


def test_cosine_per_epoch_is_constant_within_epochs(tmp_path):
    # DenseCL / MoCo-v2: no warmup, lr_e = lr * (1 + cos(pi e / E)) / 2, constant within epoch e
    cfg = tiny_cfg(str(tmp_path), SOLVER__BASE_LR=0.3, SOLVER__MAX_ITER=20, SOLVER__WARMUP_ITERS=0,
                   SOLVER__COSINE_END_LR=0.0, SOLVER__COSINE_PER_EPOCH=True, SOLVER__ITERS_PER_EPOCH=5)
    lrs = _lrs(cfg, 19)
    for epoch in range(4):
        want = 0.3 * (1 + math.cos(math.pi * epoch / 4)) / 2
        assert lrs[epoch * 5: epoch * 5 + 5] == pytest.approx([want] * 5), epoch
    cfg = tiny_cfg(str(tmp_path), SOLVER__COSINE_PER_EPOCH=True, SOLVER__ITERS_PER_EPOCH=0)
    with pytest.raises(ValueError, match="ITERS_PER_EPOCH"):
        _lrs(cfg)


def test_other_scheduler_names_are_detectron2s(tmp_path):
    cfg = tiny_cfg(str(tmp_path), SOLVER__LR_SCHEDULER_NAME="WarmupMultiStepLR", SOLVER__BASE_LR=0.1,
                   SOLVER__MAX_ITER=10, SOLVER__WARMUP_ITERS=0, SOLVER__STEPS=(5,), SOLVER__GAMMA=0.1)
    lrs = _lrs(cfg, 9)
    assert lrs[4] == pytest.approx(0.1) and lrs[5] == pytest.approx(0.01)


# ------------------------------------------------------------------ epochs -> iterations


def test_epochs_become_iterations_and_cli_max_iter_wins(tmp_path):
    cfg = tiny_cfg(str(tmp_path), freeze=False, SOLVER__EPOCHS=3, SOLVER__WARMUP_EPOCHS=0.5, SOLVER__IMS_PER_BATCH=8)
    notes = apply_epoch_schedule(cfg, cli_keys=[], num_images=100)  # 12 iterations per epoch (drop last)
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.ITERS_PER_EPOCH) == (36, 6, 12)
    assert any("MAX_ITER 36" in n for n in notes)

    cfg = tiny_cfg(str(tmp_path), freeze=False, SOLVER__EPOCHS=3, SOLVER__IMS_PER_BATCH=8, SOLVER__MAX_ITER=5)
    notes = apply_epoch_schedule(cfg, cli_keys=["SOLVER.MAX_ITER"], num_images=100)
    assert cfg.SOLVER.MAX_ITER == 5 and cfg.SOLVER.WARMUP_ITERS == 0
    assert any("command line wins" in n for n in notes)


def test_setup_reads_the_dataset_size_and_honours_the_command_line(tmp_path):
    # demo_images: 9 photos, 4 per batch -> 2 iterations per epoch
    from engine_utils import BASE_CONFIG, tiny_opts

    def setup(*extra):
        opts = tiny_opts(str(tmp_path), SOLVER__MAX_ITER=None, SOLVER__WARMUP_ITERS=None, SOLVER__EPOCHS=5,
                         SOLVER__WARMUP_EPOCHS=1.0) + list(extra)
        return prepare_pretrain(argparse.Namespace(config_file=BASE_CONFIG, opts=opts, resume=False,
                                                   eval_only=False), check=False).cfg

    cfg = setup()
    assert cfg.is_frozen() and (cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.ITERS_PER_EPOCH) == (10, 2, 2)
    cfg = setup("SOLVER.MAX_ITER", "3")
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS) == (3, 2)
