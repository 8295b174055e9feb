"""2 gloo CPU processes behave like 1 process on the same global batch: same
gradients and step (SyncBN -> naiveSyncBN), and a NaN on one rank stops every rank."""
import soco_d2  # noqa: F401  (first: the spawned processes import this module too)
import pytest
import torch
from detectron2.utils import comm

from dist_utils import assert_same_step, one_training_step, run_in_gloo_processes
from engine_utils import one_torch_thread, tiny_cfg  # noqa: F401  (autouse fixture)
from soco_d2.engine import NonFiniteLossError
from soco_d2.engine.metrics import check_finite_losses


def nan_on_rank_one() -> str:
    loss = torch.tensor(float("nan") if comm.get_rank() == 1 else 0.5)
    try:
        check_finite_losses({"loss_a": loss, "loss_b": torch.tensor(1.0)}, 7, "out/model_0000005.pth")
    except NonFiniteLossError as err:
        return str(err)
    return ""


def both_checks(cfg) -> dict:
    """One launch for both checks (spawning the processes is the slow part)."""
    return {"step": one_training_step(cfg), "nan": nan_on_rank_one()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    norms = {"MODEL__RESNETS__NORM": "SyncBN", "MODEL__SSL__HEAD_NORM": "SyncBN"}
    (single,) = run_in_gloo_processes(one_training_step, 1, tiny_cfg(str(out / "one"), **norms))
    return single, run_in_gloo_processes(both_checks, 2, tiny_cfg(str(out / "two"), **norms))


def test_two_processes_give_the_gradients_of_one(runs):
    single, results = runs
    ranks = [r["step"] for r in results]
    assert single["world_size"] == 1 and [r["world_size"] for r in ranks] == [2, 2]
    # one process: SyncBN computes plain BN statistics; 2 CPU processes: naiveSyncBN syncs them
    assert single["norms"] == ["BatchNorm2d"] and ranks[0]["norms"] == ["NaiveSyncBatchNorm"]
    assert single["batch_size"] == 4 and ranks[0]["batch_size"] == 2
    assert len(single["grads"]) > 50
    assert_same_step(single, ranks)


def test_a_nan_on_one_rank_stops_every_rank(runs):
    messages = [r["nan"] for r in runs[1]]
    assert messages[0] == messages[1] != ""
    assert "iteration 7" in messages[0] and "rank 1: loss_a=nan" in messages[0]
    assert "rank 0: loss_a=0.5" in messages[0] and "out/model_0000005.pth" in messages[0]
