"""MoCo-v2 and DenseCL under 2-process gloo DDP: every rank holds rank 0's
negatives queues as soon as the trainer is built, although each rank drew its
own random initial queue (per-rank seeds, as detectron2's default_setup gives)."""
import soco_d2  # noqa: F401  (first: the spawned processes import this module too)
import torch
from detectron2.modeling import build_model
from detectron2.utils import comm

from dist_utils import run_in_gloo_processes
from engine_utils import one_torch_thread  # noqa: F401  (autouse fixture)
from queue_model_utils import tiny_cfg


def queue_buffers(model) -> dict:
    return {name: buf.clone() for name, buf in model.named_buffers() if "queue" in name}


def build_on_each_rank(output_dir: str) -> dict:
    from soco_d2.engine import PretrainTrainer
    from soco_d2.engine.hooks import unwrap_model

    out = {}
    for name in ("mocov2_r50", "densecl_r50"):
        cfg = tiny_cfg(name, "SOLVER.IMS_PER_BATCH", 4, "OUTPUT_DIR", f"{output_dir}/{name}")
        cfg.freeze()
        torch.manual_seed(1000 + comm.get_rank())  # a different initial queue on every rank
        own = queue_buffers(build_model(cfg))
        torch.manual_seed(1000 + comm.get_rank())
        trainer = PretrainTrainer(cfg)
        out[name] = {"own": own, "trainer": queue_buffers(unwrap_model(trainer._trainer.model))}
    return out


def test_queues_are_rank_zeros_right_after_the_trainer_is_built(tmp_path):
    ranks = run_in_gloo_processes(build_on_each_rank, 2, str(tmp_path))
    for name, num_queues in (("mocov2_r50", 1), ("densecl_r50", 2)):
        rank0, rank1 = ranks[0][name], ranks[1][name]
        queues = [k for k in rank0["trainer"] if k.endswith("queue.queue") or k.endswith("queue")]
        assert len(queues) == num_queues, sorted(rank0["trainer"])
        for key in queues:
            # each rank drew its own random queue, and holds rank 0's after the trainer is built
            assert not torch.equal(rank0["own"][key], rank1["own"][key]), key
            assert torch.equal(rank0["trainer"][key], rank0["own"][key]), key
            assert torch.equal(rank1["trainer"][key], rank0["trainer"][key]), key
        assert rank0["trainer"].keys() == rank1["trainer"].keys()
        for key, buffer in rank0["trainer"].items():  # pointers and counters too
            assert torch.equal(rank1["trainer"][key], buffer), key


def bn_stats_after_two_forwards() -> dict:
    """A BatchNorm wrapped by ``wrap_ddp`` the way every trainer wraps models, fed
    rank-local inputs twice, next to the same BatchNorm run without DDP."""
    import warnings

    from soco_d2.engine.trainer import no_forward_buffer_sync, wrap_ddp

    torch.manual_seed(0)
    local = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    wrapped = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    wrapped.load_state_dict(local.state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ddp = wrap_ddp(wrapped, **no_forward_buffer_sync())
    generator = torch.Generator().manual_seed(comm.get_rank())
    for _ in range(2):
        x = torch.randn(2, 3, 5, 5, generator=generator) + comm.get_rank()
        local(x)
        ddp(x).sum().backward()
    return {
        "future_warnings": [str(w.message) for w in caught if issubclass(w.category, FutureWarning)],
        "ddp_mean": wrapped[1].running_mean.clone(),
        "local_mean": local[1].running_mean.clone(),
    }


def test_ddp_keeps_batchnorm_statistics_per_rank_without_deprecation_warnings():
    """No broadcast of rank 0's buffers at each forward (detectron2's choice, which the
    pretraining BN recipes assume), through the torch API that does not warn."""
    ranks = run_in_gloo_processes(bn_stats_after_two_forwards, 2)
    for rank in ranks:
        assert rank["future_warnings"] == []
        assert torch.equal(rank["ddp_mean"], rank["local_mean"])
    assert not torch.equal(ranks[0]["ddp_mean"], ranks[1]["ddp_mean"])
