"""PretrainTrainer in this process: metrics.json keys, exact resume (weights,
momentum target, optimizer, lr and tau schedules, data stream, a drawn seed),
the momentum hook, and the NaN/inf guard."""
import os
import shutil

import pytest
import soco_d2  # noqa: F401
import torch
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.utils.events import EventStorage, get_event_storage

from engine_utils import one_torch_thread, tiny_cfg  # noqa: F401  (autouse fixture)
from soco_d2.engine import IterationSeedHook, MomentumHook, NonFiniteLossError, PretrainTrainer
from soco_d2.engine.metrics import read_metrics
from soco_d2.modeling.meta_arch import BYOL
from soco_d2.modeling.momentum import momentum_at


class _OneLossBYOL(BYOL):
    """BYOL returning a single loss term (detectron2 alone would log only total_loss)."""

    def losses(self, batched_inputs):
        return {"loss_byol": sum(super().losses(batched_inputs).values())}


class _NaNBYOL(BYOL):
    """BYOL whose loss is NaN from iteration NAN_AT on."""

    NAN_AT = 3

    def losses(self, batched_inputs):
        losses = super().losses(batched_inputs)
        if get_event_storage().iter >= self.NAN_AT:
            losses["loss_byol_12"] = losses["loss_byol_12"] * float("nan")
        return losses


for _cls in (_OneLossBYOL, _NaNBYOL):
    if _cls.__name__ not in META_ARCH_REGISTRY:
        META_ARCH_REGISTRY.register(_cls)


def train(cfg, resume=False):
    trainer = PretrainTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """6 iterations, checkpoints after iterations 1, 3, 5; SEED -1 (drawn, stored in checkpoints)."""
    out = str(tmp_path_factory.mktemp("run_a"))
    torch.manual_seed(0)
    trainer = train(tiny_cfg(out, SEED=-1))
    return out, read_metrics(os.path.join(out, "metrics.json")), trainer.seed


def test_metrics_json_has_every_key(uninterrupted):
    out, rows, _ = uninterrupted
    assert [r["iteration"] for r in rows] == list(range(6))
    for r in rows:
        assert {"iteration", "total_loss", "loss_byol_12", "loss_byol_21", "lr", "momentum_tau"} <= set(r)
        assert r["total_loss"] == pytest.approx(r["loss_byol_12"] + r["loss_byol_21"], rel=1e-6)
        assert r["momentum_tau"] == pytest.approx(momentum_at(r["iteration"], 6, 0.99, "cosine"), abs=1e-12)
    assert rows[0]["lr"] == pytest.approx(0.4 * 0.01) and rows[2]["lr"] == pytest.approx(0.4)
    files = set(os.listdir(out))
    assert {"model_0000001.pth", "model_0000003.pth", "model_0000005.pth", "model_final.pth",
            "last_checkpoint"} <= files
    assert any(f.startswith("events.out.tfevents") for f in files)
    ckpt = _state(os.path.join(out, "model_0000003.pth"))
    assert ckpt["iteration"] == 3 and "optimizer" in ckpt["trainer"]["_trainer"]
    assert "LRScheduler" in ckpt["trainer"]["hooks"] and "seed" in ckpt["trainer"]
    assert any(k.startswith("target.backbone.") for k in ckpt["model"])


def test_resume_continues_exactly(uninterrupted, tmp_path):
    out_a, rows_a, seed_a = uninterrupted
    out_b = str(tmp_path)
    shutil.copy(os.path.join(out_a, "model_0000003.pth"), out_b)
    with open(os.path.join(out_b, "last_checkpoint"), "w") as f:
        f.write("model_0000003.pth")
    torch.manual_seed(123)  # a different init and RNG state: everything must come from the checkpoint
    trainer = train(tiny_cfg(out_b, SEED=-1), resume=True)
    assert trainer.start_iter == 4 and trainer.seed == seed_a
    rows_b = read_metrics(os.path.join(out_b, "metrics.json"))
    assert [r["iteration"] for r in rows_b] == [4, 5]
    for ra, rb in zip(rows_a[4:], rows_b):
        for key in ("total_loss", "loss_byol_12", "loss_byol_21", "lr", "momentum_tau"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-7), (rb["iteration"], key)
    final_a, final_b = (_state(os.path.join(o, "model_final.pth"))["model"] for o in (out_a, out_b))
    assert final_a.keys() == final_b.keys()
    for key in final_a:
        torch.testing.assert_close(final_b[key], final_a[key], rtol=1e-5, atol=1e-6, msg=key)


def test_a_single_loss_term_is_still_logged(tmp_path):
    train(tiny_cfg(str(tmp_path), MODEL__META_ARCHITECTURE="_OneLossBYOL", SOLVER__MAX_ITER=2))
    rows = read_metrics(os.path.join(str(tmp_path), "metrics.json"))
    assert len(rows) == 2 and all(r["loss_byol"] == pytest.approx(r["total_loss"]) for r in rows)


def test_momentum_hook_moves_target_by_exactly_tau(tmp_path):
    cfg = tiny_cfg(str(tmp_path))
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(torch.randn_like(p))  # online != target
    before = {k: v.clone() for k, v in model.target.state_dict().items()}
    online = {"backbone": model.backbone.state_dict(), "projector": model.projector.state_dict()}
    hook = MomentumHook(model, base=0.99, schedule="cosine")

    class FakeTrainer:
        iter, max_iter = 30, 40

    with EventStorage(30) as storage:
        hook.trainer = FakeTrainer()
        hook.trainer.storage = storage
        hook.after_step()
        tau = storage.latest()["momentum_tau"][0]
    assert tau == pytest.approx(1 - 0.01 * (1 + torch.cos(torch.tensor(torch.pi * 30 / 40)).item()) / 2)
    assert hook.tau(0) == pytest.approx(0.99) and hook.tau(20) == pytest.approx(0.995) and hook.tau(40) == 1.0
    assert MomentumHook(model, 0.999, "constant", max_iter=40).tau(25) == 0.999
    after = model.target.state_dict()
    params = {f"{m}.{n}" for m in ("backbone", "projector") for n, _ in getattr(model, m).named_parameters()}
    for key in params:
        module, name = key.split(".", 1)
        want = tau * before[key] + (1 - tau) * online[module][name]
        torch.testing.assert_close(after[key], want, rtol=0, atol=1e-6, msg=key)
    moved = [k for k in params if not torch.equal(after[k], before[k])]
    assert moved, "the perturbed online weights must pull the target"
    # buffers (BN running stats) are not averaged
    for key in set(before) - params:
        assert torch.equal(after[key], before[key]), key
    with pytest.raises(ValueError):
        MomentumHook(model, 0.99, "linear")


def test_iteration_seed_hook_is_a_function_of_seed_and_iteration():
    class FakeTrainer:
        iter = 5

    hook = IterationSeedHook(42)
    hook.trainer = FakeTrainer()
    draws = []
    for _ in range(2):
        hook.before_step()
        draws.append(torch.rand(3))
    assert torch.equal(draws[0], draws[1])
    FakeTrainer.iter = 6
    hook.before_step()
    assert not torch.equal(torch.rand(3), draws[0])


def test_nan_guard_stops_before_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    out = str(tmp_path)
    trainer = PretrainTrainer(tiny_cfg(out, MODEL__META_ARCHITECTURE="_NaNBYOL"))  # NaN from iteration 3
    trainer.resume_or_load(resume=False)
    steps = []
    optimizer = trainer._trainer.optimizer
    step = optimizer.step

    def counted_step(*args, **kwargs):
        steps.append(trainer.iter)
        return step(*args, **kwargs)

    optimizer.step = counted_step
    with pytest.raises(NonFiniteLossError) as err:
        trainer.train()
    message = str(err.value)
    good = os.path.join(out, "model_0000001.pth")
    assert "iteration 3" in message and "loss_byol_12=nan" in message and good in message
    assert steps == [0, 1, 2]  # iteration 3 never reached the optimizer
    files = set(os.listdir(out))
    assert "model_0000001.pth" in files and "model_0000003.pth" not in files and "model_final.pth" not in files
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_0000001.pth"
    ckpt = _state(good)
    assert ckpt["iteration"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    rows = read_metrics(os.path.join(out, "metrics.json"))
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(r["total_loss"])) for r in rows)
    # the weights in memory are still those after iteration 2's step
    assert all(torch.isfinite(p).all() for p in trainer._trainer.model.parameters())


def test_without_the_guard_detectron2s_own_check_still_raises(tmp_path):
    _NaNBYOL.NAN_AT = 0
    try:
        with pytest.raises(FloatingPointError) as err:
            train(tiny_cfg(str(tmp_path), MODEL__META_ARCHITECTURE="_NaNBYOL", SOLVER__NAN_GUARD=False))
    finally:
        _NaNBYOL.NAN_AT = 3
    assert not isinstance(err.value, NonFiniteLossError)


def test_loss_curve_summary_averages_the_ends_and_keeps_the_resumed_rows(tmp_path):
    import json

    from soco_d2.engine.metrics import end_partial_line, format_loss_summary, loss_curve_summary

    rows = [{"iteration": i, "total_loss": 20.0 - i} for i in range(20)]
    rows += [{"iteration": 18, "total_loss": 0.5}, {"iteration": 19, "total_loss": 0.25}]  # a resumed run's rows
    rows.insert(3, {"iteration": 3, "lr": 0.1})  # rows without a loss are skipped
    path = tmp_path / "metrics.json"
    lines = [json.dumps(r) for r in rows]
    path.write_text("\n".join(lines[:-2]) + "\n" + '{"iteration": 17, "total_l')  # killed mid-row
    end_partial_line(str(path))  # what a resumed trainer does before appending
    with open(path, "a") as f:
        f.write("\n".join(lines[-2:]) + "\n")
    summary = loss_curve_summary(str(path))
    assert summary["num_rows"] == 20 and summary["window"] == 2
    assert summary["first"] == pytest.approx(19.5) and summary["last"] == pytest.approx(0.375)
    assert summary["min"] == 0.25 and summary["min_iteration"] == 19
    assert "first 19.5000, last 0.3750" in format_loss_summary(summary) and "(decreased)" in format_loss_summary(summary)


def test_loss_curve_summary_leaves_out_the_queue_warmup(tmp_path):
    """MoCo-v2 / DenseCL: the loss against a queue of random initial keys is far
    lower than any later one; those iterations do not count as the start."""
    import json

    from soco_d2.engine.metrics import format_loss_summary, loss_curve_summary

    rows = [{"iteration": 0, "total_loss": 0.1, "moco/queue_filled": 0.5},
            {"iteration": 1, "total_loss": 0.2, "moco/queue_filled": 0.75}]
    rows += [{"iteration": i, "total_loss": 3.0 - 0.1 * i, "moco/queue_filled": 1.0} for i in range(2, 12)]
    path = tmp_path / "metrics.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = loss_curve_summary(str(path))
    assert summary["queue_warmup"] == 2 and summary["iterations"] == [2, 11]
    assert summary["first"] == pytest.approx(2.8) and summary["min"] == pytest.approx(1.9)
    text = format_loss_summary(summary)
    assert "(decreased)" in text and "2 iteration(s) left out" in text


def test_cpu_amp_uses_bf16_autocast_with_the_guard(tmp_path):
    from soco_d2.engine.steps import PretrainStepTrainer

    trainer = train(tiny_cfg(str(tmp_path), SOLVER__AMP__ENABLED=True, SOLVER__MAX_ITER=2))
    assert isinstance(trainer._trainer, PretrainStepTrainer) and trainer._trainer.nan_guard
    precision = trainer._trainer.precision
    assert (precision.device_type, precision.dtype, trainer._trainer.grad_scaler) == ("cpu", torch.bfloat16, None)
    rows = read_metrics(os.path.join(str(tmp_path), "metrics.json"))
    assert [r["iteration"] for r in rows] == [0, 1] and all(0 < r["total_loss"] < 10 for r in rows)


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    from soco_d2.checkpoint import SafeCheckpointer as AtomicCheckpointer

    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)

    def killed_mid_write(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # stands in for SIGKILL during torch.save

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000003", iteration=3)
    monkeypatch.undo()
    assert not (tmp_path / "model_0000003.pth").exists()
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    assert _state(checkpointer.get_checkpoint_file())["iteration"] == 1
    trainer = PretrainTrainer(tiny_cfg(str(tmp_path / "run")))
    assert isinstance(trainer.checkpointer, AtomicCheckpointer)
    assert trainer._hooks[[type(h).__name__ for h in trainer._hooks].index("PeriodicCheckpointer")].checkpointer \
        is trainer.checkpointer
