"""The probe hook in the pretraining engine: probes every PERIOD iterations and at the
end, logged in metrics.json with the iteration they describe; a run killed after a
probe and resumed from an earlier checkpoint logs no iteration twice (nor does a
finished run resumed); 2 gloo processes log the accuracies of 1."""
import json
import os

import pytest
import soco_d2  # noqa: F401
import torch
from detectron2.engine import HookBase

from dist_utils import run_in_gloo_processes
from engine_utils import one_torch_thread, tiny_cfg  # noqa: F401  (autouse fixture)
from probe_utils import make_colour_folders
from soco_d2.engine import PretrainTrainer
from soco_d2.engine.metrics import read_metrics
from soco_d2.engine.probe_hook import ProbeHook
from soco_d2.errors import InputError
from tool_utils import load_tool

KEYS = ("probe/region_knn_top1", "probe/region_linear_top1", "probe/image_knn_top1", "probe/image_linear_top1")


def probe_opts(folders, **overrides):
    """BYOL R18 (engine_utils) with object-level probes on the demo instance sets (res5,
    images at 128 px) and image-level ones on colour folders."""
    return {
        "TEST__PROBE__ENABLED": True, "TEST__PROBE__PERIOD": 3,
        "TEST__PROBE__REGION_MEMORY": "demo_instances_train", "TEST__PROBE__REGION_QUERIES": "demo_instances_val",
        "TEST__PROBE__MAX_MEMORY_IMAGES": 9, "TEST__PROBE__REGION_MIN_SIZE": 128, "TEST__PROBE__REGION_MAX_SIZE": 160,
        "TEST__PROBE__IMAGE_MEMORY": folders["memory"], "TEST__PROBE__IMAGE_QUERIES": folders["queries"],
        "TEST__PROBE__IMAGE_RESIZE": 64, "TEST__PROBE__IMAGE_CROP": 64,
        "TEST__PROBE__BATCH_SIZE": 8, "TEST__PROBE__NUM_WORKERS": 0,
        "SOLVER__MAX_ITER": 8, "SOLVER__CHECKPOINT_PERIOD": 4, **overrides,
    }


class Crash(HookBase):
    """Stops the run with an error before iteration ``at`` (after the writer flushed the earlier ones)."""

    def __init__(self, at):
        self.at = at

    def before_step(self):
        if self.trainer.iter == self.at:
            raise RuntimeError(f"killed before iteration {self.at}")


def train(cfg, resume=False, crash_at=None):
    torch.manual_seed(0)  # the init (the tools seed it in setup_run)
    trainer = PretrainTrainer(cfg, progress=False)
    if crash_at is not None:
        trainer.register_hooks([Crash(crash_at)])
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def probe_lines(output_dir):
    """iteration -> the raw metrics.json rows holding a probe value (to count duplicates)."""
    found = {}
    with open(os.path.join(output_dir, "metrics.json")) as f:
        for line in f:
            row = json.loads(line)
            if any(k.startswith("probe/") for k in row):
                found.setdefault(row["iteration"], []).append(row)
    return found


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_colour_folders(str(tmp_path_factory.mktemp("colour")), {"memory": 3, "queries": 2})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, folders):
    out = str(tmp_path_factory.mktemp("probe_run"))
    train(tiny_cfg(out, **probe_opts(folders)))
    return out


def test_probes_every_period_and_at_the_end_in_the_writers_rows(uninterrupted):
    lines = probe_lines(uninterrupted)
    assert sorted(lines) == [2, 5, 7]  # after iterations 3 and 6 of 8 (PERIOD 3), and after the last
    assert all(len(rows) == 1 for rows in lines.values())
    rows = {r["iteration"]: r for r in read_metrics(os.path.join(uninterrupted, "metrics.json"))}
    for it in (2, 5, 7):
        assert "total_loss" in lines[it][0]  # the probe values share the writer's row of their iteration
        for key in KEYS:
            assert 0.0 <= rows[it][key] <= 100.0, (it, key)
        assert rows[it]["probe/region_knn_mean_class_acc"] >= 0.0
    print({it: {k: rows[it][k] for k in KEYS} for it in (2, 5, 7)})


def test_plot_metrics_tool_draws_the_loss_and_probe_curves(uninterrupted, tmp_path, capsys):
    from PIL import Image

    tool = load_tool("plot_metrics")
    assert tool.cli([uninterrupted]) == 0  # a run folder stands for its metrics.json
    png = os.path.join(uninterrupted, "loss_curve.png")
    assert capsys.readouterr().out.strip() == f"wrote {png}"
    assert Image.open(png).size == (700, 600)  # two panels: the loss, and the probes
    out = str(tmp_path / "terms.png")
    assert tool.cli([os.path.join(uninterrupted, "metrics.json"), "--loss-keys", "loss_byol_12", "loss_byol_21",
                     "--output", out]) == 0
    assert Image.open(out).size == (700, 600)
    for argv, message in (([str(tmp_path / "nowhere")], "no such metrics.json"),
                          ([uninterrupted, "--loss-keys", "loss_nope"], "has no ['loss_nope'] values")):
        with pytest.raises(SystemExit) as err:
            tool.cli(argv)
        assert err.value.code == 2 and message in capsys.readouterr().err


def test_killed_after_a_probe_then_resumed_logs_no_iteration_twice(tmp_path, folders, uninterrupted, caplog):
    out = str(tmp_path / "killed")
    cfg = tiny_cfg(out, **probe_opts(folders))
    with pytest.raises(RuntimeError, match="killed before iteration 6"):
        train(cfg, crash_at=6)  # probes at 2 and 5 logged, last checkpoint after iteration 3
    assert sorted(probe_lines(out)) == [2, 5]
    assert open(os.path.join(out, "last_checkpoint")).read().strip() == "model_0000003.pth"

    with caplog.at_level("INFO", logger="soco_d2.engine.probe_hook"):
        train(cfg, resume=True)  # replays 4..7: the probe of 5 is on file, 7 is new
    assert "probes of iteration 5 are already in" in caplog.text
    lines = probe_lines(out)
    assert {it: len(rows) for it, rows in lines.items()} == {2: 1, 5: 1, 7: 1}
    reference = probe_lines(uninterrupted)
    for it in (2, 5, 7):  # the resumed run is the uninterrupted one (the engine resumes exactly)
        assert {k: lines[it][0][k] for k in KEYS} == {k: reference[it][0][k] for k in KEYS}, it
    merged = {r["iteration"]: r for r in read_metrics(os.path.join(out, "metrics.json"))}
    assert all(key in merged[5] for key in KEYS)  # the replayed row of 5 (losses) merged with its probe row

    before = open(os.path.join(out, "metrics.json")).read()
    train(cfg, resume=True)  # a finished run resumed: nothing to train, the final probe is on file
    after = open(os.path.join(out, "metrics.json")).read()
    assert {it: len(rows) for it, rows in probe_lines(out).items()} == {2: 1, 5: 1, 7: 1}
    assert after.startswith(before) and "probe/" not in after[len(before):]


def test_hook_checks_the_models_own_features_when_training_starts(tmp_path, folders):
    cfg = tiny_cfg(str(tmp_path), **probe_opts(folders, TEST__PROBE__REGION_FEATURES="['res4']"))
    with pytest.raises(InputError, match=r"TEST.PROBE \(probe hook\).*res4.*OUT_FEATURES"):
        train(cfg)  # the pretraining ResNet returns res5 only
    assert not os.path.exists(os.path.join(str(tmp_path), "model_final.pth"))


def test_hook_is_off_unless_enabled(tmp_path, folders):
    trainer = PretrainTrainer(tiny_cfg(str(tmp_path), **probe_opts(folders, TEST__PROBE__ENABLED=False)))
    assert not any(isinstance(h, ProbeHook) for h in trainer._hooks)
    trainer = PretrainTrainer(tiny_cfg(str(tmp_path), **probe_opts(folders)))
    names = [type(h).__name__ for h in trainer._hooks]
    assert names.index("ProbeHook") < names.index("PeriodicWriter")


def _probe_worker(cfg):
    from detectron2.utils import comm

    from soco_d2.engine.hooks import unwrap_model

    torch.manual_seed(0)  # the same init everywhere (DDP broadcasts rank 0's anyway)
    trainer = PretrainTrainer(cfg, progress=False)
    backbone = unwrap_model(trainer._trainer.model).backbone
    if comm.get_rank() == 1:  # BN statistics that drifted apart on one rank (per-process BN)
        with torch.no_grad():
            for name, buffer in backbone.named_buffers():
                if name.endswith("running_mean"):
                    buffer.add_(1.0)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return {"logged": {key: trainer.storage.history(key).values() for key in KEYS},
            "buffers": {name: b.clone() for name, b in backbone.named_buffers()}}


def test_two_gloo_processes_log_the_accuracies_of_one(tmp_path, folders):
    """FrozenBN and lr 0: the backbone stays the init, so 1 and 2 processes probe the same
    model and every logged accuracy must be the same (trained weights differ between 1
    and N processes by float rounding, which a linear probe's L-BFGS can turn into one
    flipped query).  Rank 1's drifted BN statistics are replaced by rank 0's before the
    first probe."""
    opts = probe_opts(folders, SOLVER__MAX_ITER=2, TEST__PROBE__PERIOD=1, SOLVER__BASE_LR=0.0,
                      SOLVER__LR_SCHEDULER_NAME="WarmupMultiStepLR", MODEL__RESNETS__NORM="FrozenBN",
                      SOLVER__CHECKPOINT_PERIOD=100)
    (one,) = run_in_gloo_processes(_probe_worker, 1, tiny_cfg(str(tmp_path / "one"), **opts))
    two = run_in_gloo_processes(_probe_worker, 2, tiny_cfg(str(tmp_path / "two"), **opts))
    print("1 process:", one["logged"])
    for key in KEYS:
        assert [it for _, it in one["logged"][key]] == [0, 1]  # PERIOD 1 (iteration 0) and the end (1)
        assert two[0]["logged"][key] == two[1]["logged"][key] == one["logged"][key], key
    for name, buffer in two[0]["buffers"].items():
        assert torch.equal(two[1]["buffers"][name], buffer), name
    rows = {r["iteration"]: r for r in read_metrics(str(tmp_path / "two" / "metrics.json"))}
    assert [rows[it][KEYS[0]] for it in (0, 1)] == [v for v, _ in one["logged"][KEYS[0]]]  # rank 0 wrote them
