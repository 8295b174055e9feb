"""SOLVER.AMP.DTYPE: which precision a run uses on which machine (the GPU's bf16 support
is stubbed: no GPU here), that the choice is logged, and that the float16 grad-scaler
state is optional on resume (bf16 and float32 runs have none)."""
import logging
import os

import pytest
import soco_d2  # noqa: F401
import torch

from engine_utils import one_torch_thread, tiny_cfg  # noqa: F401  (autouse fixture)
from soco_d2.data.build import load_pretrain_dicts
from soco_d2.engine import PretrainTrainer, steps
from soco_d2.engine.checks import check_pretrain_inputs
from soco_d2.engine.steps import Precision, resolve_precision
from soco_d2.errors import InputError


@pytest.mark.parametrize("dtype,native,expected", [
    ("auto", True, (torch.bfloat16, False)),    # A100 / H100: bf16, no scaler
    ("auto", False, (torch.float16, True)),     # V100 / T4: fp16 + GradScaler
    ("float16", True, (torch.float16, True)),
    ("bfloat16", True, (torch.bfloat16, False)),
])
def test_cuda_precision_follows_the_gpus_bf16_support(dtype, native, expected, monkeypatch, tmp_path):
    monkeypatch.setattr(steps, "cuda_runs_bf16", lambda: native)
    precision = resolve_precision(tiny_cfg(str(tmp_path), SOLVER__AMP__ENABLED=True, SOLVER__AMP__DTYPE=dtype),
                                  cuda=True)
    assert (precision.device_type, precision.dtype, precision.grad_scaler) == ("cuda", *expected)
    print(precision.describe())


def test_bf16_on_a_gpu_without_it_warns(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(steps, "cuda_runs_bf16", lambda: False)
    cfg = tiny_cfg(str(tmp_path), SOLVER__AMP__ENABLED=True, SOLVER__AMP__DTYPE="bfloat16")
    with caplog.at_level(logging.WARNING, logger="soco_d2.engine.steps"):
        assert resolve_precision(cfg, cuda=True).dtype == torch.bfloat16
    assert "emulated and slow" in caplog.text


def test_cpu_runs_bf16_and_amp_off_runs_float32(tmp_path):
    for dtype in ("auto", "float16", "bfloat16"):
        cpu = resolve_precision(tiny_cfg(str(tmp_path), SOLVER__AMP__ENABLED=True, SOLVER__AMP__DTYPE=dtype))
        assert (cpu.device_type, cpu.dtype, cpu.grad_scaler) == ("cpu", torch.bfloat16, False)
    assert "applies on CUDA" in cpu.why if dtype == "float16" else True
    off = resolve_precision(tiny_cfg(str(tmp_path)), cuda=True)
    assert (off.dtype, off.grad_scaler) == (None, False)


def test_a_wrong_dtype_is_an_input_error_at_start_up(tmp_path):
    cfg = tiny_cfg(str(tmp_path), SOLVER__AMP__DTYPE="fp8")
    with pytest.raises(InputError, match="SOLVER.AMP.DTYPE 'fp8': use one of auto, bfloat16, float16"):
        check_pretrain_inputs(cfg, load_pretrain_dicts(cfg.DATASETS.TRAIN))


FP16_WITH_SCALER = Precision("cpu", torch.float16, True, "test: float16 + GradScaler on the CPU")


def train(cfg, resume: bool) -> PretrainTrainer:
    trainer = PretrainTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def checkpoint(out, name):
    return torch.load(os.path.join(out, name), map_location="cpu", weights_only=False)


def test_grad_scaler_state_is_optional_on_resume(tmp_path, monkeypatch, caplog):
    """bf16 checkpoint -> float16 + GradScaler run (no KeyError: the scale starts fresh, warned),
    whose checkpoint holds the scaler -> resumed with it restored, and -> a bf16 run (ignored)."""
    out = str(tmp_path)
    trainer = train(tiny_cfg(out, SOLVER__AMP__ENABLED=True, SOLVER__MAX_ITER=2), resume=False)
    assert trainer._trainer.grad_scaler is None
    assert "grad_scaler" not in checkpoint(out, "model_final.pth")["trainer"]["_trainer"]

    # the CPU has no float16 path of its own (it runs bf16): a float16 + GradScaler step stands in for a GPU's
    monkeypatch.setattr(steps, "resolve_precision", lambda cfg: FP16_WITH_SCALER)
    with caplog.at_level(logging.WARNING, logger="soco_d2.engine.steps"):
        trainer = train(tiny_cfg(out, SOLVER__AMP__ENABLED=True, SOLVER__MAX_ITER=4), resume=True)
    assert "no float16 grad-scaler state" in caplog.text
    assert trainer.start_iter == 2 and trainer.iter == 4
    saved = checkpoint(out, "model_final.pth")["trainer"]["_trainer"]["grad_scaler"]
    default = torch.amp.GradScaler("cpu").get_scale()
    assert 0 < saved["scale"] < default  # the first float16 steps overflowed at 2**16 and backed off

    resumed = PretrainTrainer(tiny_cfg(out, SOLVER__AMP__ENABLED=True, SOLVER__MAX_ITER=6))
    resumed.resume_or_load(resume=True)
    assert resumed._trainer.grad_scaler.state_dict() == saved

    monkeypatch.undo()
    trainer = train(tiny_cfg(out, SOLVER__AMP__ENABLED=True, SOLVER__MAX_ITER=6), resume=True)  # bf16 again
    assert trainer.start_iter == 4 and trainer._trainer.grad_scaler is None


def test_the_trainer_logs_its_precision_and_accumulation(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="soco_d2.engine.steps"):
        PretrainTrainer(tiny_cfg(str(tmp_path), SOLVER__AMP__ENABLED=True, SOLVER__ACCUMULATE_STEPS=2))
    assert ("precision: bfloat16 autocast on cpu (CPU autocast runs bfloat16); 2 accumulation steps per "
            "optimizer step") in caplog.text
