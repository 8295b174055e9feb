"""--resume under DDP: processes that did not all load the same checkpoint (another
iteration, no checkpoint, or another run's file of the same name) all stop with one
message; processes that did, start together."""
import shutil

import soco_d2  # noqa: F401  (first: the spawned processes import this module too)
import pytest
import torch
from detectron2.utils import comm

from dist_utils import run_in_gloo_processes
from engine_utils import one_torch_thread, tiny_cfg  # noqa: F401  (autouse fixture)
from soco_d2.engine import PretrainTrainer
from soco_d2.errors import InputError


def resume_each_case(cfg, cases: dict) -> dict:
    """For each case (one OUTPUT_DIR per rank): the start iteration, or the error message."""
    results = {}
    for name, output_dirs in cases.items():
        rank_cfg = cfg.clone()
        rank_cfg.defrost()
        rank_cfg.OUTPUT_DIR = output_dirs[comm.get_rank()]
        rank_cfg.freeze()
        trainer = PretrainTrainer(rank_cfg)
        try:
            trainer.resume_or_load(resume=True)
            results[name] = trainer.start_iter
        except InputError as err:
            results[name] = str(err)
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two 4-iteration runs from different initial weights: checkpoints after iterations 1 and 3."""
    root = tmp_path_factory.mktemp("resume_ranks")
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        trainer = PretrainTrainer(tiny_cfg(str(root / name), SOLVER__MAX_ITER=4))
        trainer.resume_or_load(resume=False)
        trainer.train()
    shutil.copytree(root / "a", root / "a_older")
    (root / "a_older" / "last_checkpoint").write_text("model_0000001.pth")
    (root / "empty").mkdir()
    return root


def test_ranks_that_resume_differently_all_stop_with_one_message(runs):
    root = str(runs)
    cases = {
        "same": [f"{root}/a", f"{root}/a"],
        "no checkpoint": [f"{root}/a", f"{root}/empty"],
        "older checkpoint": [f"{root}/a", f"{root}/a_older"],
        "other run, same file name": [f"{root}/a", f"{root}/b"],
    }
    ranks = run_in_gloo_processes(resume_each_case, 2, tiny_cfg(f"{root}/unused", SOLVER__MAX_ITER=6), cases)
    assert ranks[0]["same"] == ranks[1]["same"] == 4
    for case in list(cases)[1:]:
        message = ranks[0][case]
        print(f"{case}: {message}")
        assert isinstance(message, str) and ranks[1][case] == message, case  # every rank, the same message
        assert message.startswith("--resume: the processes did not start from the same checkpoint (rank 0 ")
        assert "iteration 4 from model_final.pth" in message and "shares" in message
    assert "rank 1 (host " in ranks[0]["no checkpoint"]
    assert "iteration 0 from MODEL.WEIGHTS (random init)" in ranks[0]["no checkpoint"]
    assert "iteration 2 from model_0000001.pth" in ranks[0]["older checkpoint"]
    # same iteration and file name: only the weights tell them apart
    first, second = ranks[0]["other run, same file name"].split("; ")
    assert first.split("weights ")[1][:12] != second.split("weights ")[1][:12]
