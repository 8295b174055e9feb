"""DenseCL: correspondence on constructed features, the dense loss against a loop
reference, the dense head, lambda and its warm-up, both queues, DDP (identical
queues on every rank, shuffle-BN), checkpoint round trip and the paper config."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from dist_utils import run_in_gloo_processes
from queue_model_utils import tiny_cfg as tiny_queue_cfg
from queue_model_utils import two_view_samples

from soco_d2 import get_pretrain_cfg
from config_utils import project_config_path
from soco_d2.modeling.losses import densecl_correspondence, densecl_dense_loss, infonce_loss
from soco_d2.modeling.meta_arch.densecl import DenseHead


def test_correspondence_finds_a_known_spatial_permutation():
    # key map = query map with its 9 positions permuted and rescaled per position (cosine
    # ignores scale): query position i must match the key position holding it
    g = torch.Generator().manual_seed(0)
    q_feat = torch.randn(2, 16, 3, 3, generator=g)
    perm = torch.stack([torch.randperm(9, generator=g) for _ in range(2)])  # key position j holds query perm[j]
    scale = torch.rand(2, 1, 9, generator=g) + 0.5
    k_feat = torch.stack([q_feat[n].flatten(1)[:, perm[n]] for n in range(2)]) * scale
    index = densecl_correspondence(q_feat, k_feat.view(2, 16, 3, 3))
    assert index.dtype == torch.long and index.shape == (2, 9)
    assert torch.equal(index, torch.argsort(perm, dim=1))  # i -> j with perm[j] = i


def test_correspondence_is_argmax_cosine_not_dot_product():
    q = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    k = torch.tensor([[10.0, 10.0], [0.1, 0.0]]).T.reshape(1, 2, 1, 2)  # large but 45 deg vs small but aligned
    assert densecl_correspondence(q, k).tolist() == [[1]]


def reference_dense_loss(q_dense, k_dense, q_feat, k_feat, queue, temperature):
    """Loops: for every image n and query position s, the key position of highest backbone
    cosine is the positive, the queue columns the negatives; mean over positions."""
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    def cos(a, b):
        return sum(x * y for x, y in zip(unit(a), unit(b)))

    num, dim, positions = len(q_dense), len(q_dense[0]), len(q_dense[0][0])
    columns = [list(c) for c in zip(*queue)]
    total = 0.0
    for n in range(num):
        feat_q = [[q_feat[n][c][s] for c in range(len(q_feat[n]))] for s in range(positions)]
        feat_k = [[k_feat[n][c][s] for c in range(len(k_feat[n]))] for s in range(positions)]
        for s in range(positions):
            sims = [cos(feat_q[s], feat_k[j]) for j in range(positions)]
            best = sims.index(max(sims))
            r = unit([q_dense[n][d][s] for d in range(dim)])
            t = unit([k_dense[n][d][best] for d in range(dim)])
            pos = sum(a * b for a, b in zip(r, t)) / temperature
            negs = [sum(a * b for a, b in zip(r, col)) / temperature for col in columns]
            total += -pos + math.log(math.exp(pos) + sum(math.exp(x) for x in negs))
    return total / (num * positions)


def test_dense_loss_equals_loop_reference():
    g = torch.Generator().manual_seed(1)
    q_dense, k_dense = (torch.randn(2, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    q_feat, k_feat = (torch.randn(2, 6, 2, 2, generator=g, dtype=torch.float64) for _ in range(2))
    queue = F.normalize(torch.randn(4, 7, generator=g, dtype=torch.float64), dim=0)
    ref = reference_dense_loss(q_dense.tolist(), k_dense.tolist(), q_feat.flatten(2).tolist(),
                               k_feat.flatten(2).tolist(), queue.tolist(), 0.2)
    ours = densecl_dense_loss(q_dense, k_dense, q_feat, k_feat, queue, 0.2)
    assert ours.item() == pytest.approx(ref, rel=1e-5)
    # (N, D, S, S) dense maps are accepted too
    assert densecl_dense_loss(q_dense.view(2, 4, 2, 2), k_dense, q_feat, k_feat, queue).item() == pytest.approx(
        densecl_dense_loss(q_dense, k_dense, q_feat, k_feat, queue).item())


def test_dense_loss_with_one_position_is_the_global_loss():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    feat = torch.randn(3, 5, 1, 1, generator=g)
    queue = F.normalize(torch.randn(8, 10, generator=g), dim=0)
    dense = densecl_dense_loss(q[:, :, None], k[:, :, None], feat, feat, queue)
    assert dense.item() == pytest.approx(infonce_loss(q, k, queue).item(), rel=1e-6)


def test_dense_head_shapes_and_pool_before_normalisation():
    head = DenseHead(8, 16, 4)
    x = torch.randn(2, 8, 3, 3)
    dense, pooled = head(x)
    assert dense.shape == (2, 4, 9) and pooled.shape == (2, 4)
    assert torch.allclose(pooled, dense.mean(dim=2), atol=1e-6)  # raw mean, normalised later
    assert DenseHead(8, 16, 4, grid_size=2)(x)[0].shape == (2, 4, 4)


# --------------------------------------------------------------------------- meta-architecture

def tiny_cfg(*opts):
    return tiny_queue_cfg("densecl_r50", *opts)


@pytest.fixture(scope="module")
def two_view_batch():
    return two_view_samples("densecl_r50")


def test_densecl_losses_weights_warmup_and_both_queues(two_view_batch):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("MODEL.DENSECL.WARMUP_ITERS", 5))
    model.train()
    pooled = []
    model.target.dense_projector.register_forward_hook(lambda m, i, o: pooled.append(o[1].detach()))
    with EventStorage(4):  # iteration 4 < 5: lambda 0, the global loss alone
        warm = model(two_view_batch)
    assert warm["loss_contra_dense"].item() == 0.0 and warm["loss_contra_single"] > 0
    assert int(model.queue.ptr) == int(model.dense_queue.ptr) == 3
    assert torch.allclose(model.dense_queue.queue[:, :3], F.normalize(pooled[0], dim=1).T, atol=1e-6)
    assert not torch.allclose(model.dense_queue.queue[:, :3], model.queue.queue[:, :3])
    with EventStorage(5) as storage:  # lambda 0.5 from iteration 5 on
        losses = model(two_view_batch)
        assert storage.history("densecl/lambda").latest() == 0.5
    assert set(losses) == {"loss_contra_single", "loss_contra_dense"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    assert int(model.queue.ptr) == 6
    sum(losses.values()).backward()
    assert model.dense_projector.conv2.weight.grad.abs().sum() > 0 and model.projector.fc2.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.target.parameters())
    keys = model.state_dict().keys()
    assert {"queue.queue", "queue.ptr", "dense_queue.queue", "dense_queue.ptr"} <= set(keys)
    assert any(k.startswith("target.dense_projector.") for k in keys)


def test_densecl_checkpoint_round_trip_restores_queues_pointers_and_key_encoder(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg)
    model.queue.enqueue(F.normalize(torch.randn(3, 16), dim=1))
    model.dense_queue.enqueue(F.normalize(torch.randn(5, 16), dim=1))  # separate pointers
    with torch.no_grad():
        model.dense_projector.conv1.weight.add_(0.5)
    model.momentum_update(0.9)
    DetectionCheckpointer(model, str(tmp_path)).save("model_test")
    torch.manual_seed(1)
    fresh = build_model(cfg)
    DetectionCheckpointer(fresh).load(str(tmp_path / "model_test.pth"))
    assert (int(fresh.queue.ptr), int(fresh.dense_queue.ptr)) == (3, 5)
    saved, loaded = model.state_dict(), fresh.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)


# --------------------------------------------------------------------------- DDP


def _ddp_densecl_worker(images):
    from detectron2.utils import comm

    from soco_d2.modeling.gather import batch_shuffle, batch_unshuffle

    rank = comm.get_rank()
    out = {}
    # shuffle-BN: the slices of all ranks are one permutation of the global batch, undone exactly
    local = torch.arange(4, dtype=torch.float32).view(4, 1) + 10 * rank
    shuffled, unshuffle = batch_shuffle(local)
    out["shuffled"] = shuffled
    out["roundtrip"] = torch.equal(batch_unshuffle(shuffled, unshuffle), local)
    # a DenseCL step on this rank's 2 images: queues stay identical on every rank
    torch.manual_seed(0)  # same initial weights and queues on both ranks
    model = build_model(tiny_cfg("MODEL.RESNETS.NORM", "BN"))
    model.train()
    keys = []
    model.target.projector.register_forward_hook(lambda m, i, o: keys.append(o.detach()))
    batch = [{"views": [images[rank, i, 0], images[rank, i, 1]]} for i in range(2)]
    with EventStorage(0):
        losses = model(batch)
    out["loss"] = {k: v.detach() for k, v in losses.items()}
    out["keys"] = F.normalize(keys[0], dim=1)  # this rank's (shuffled) key batch
    out["queue"], out["ptr"] = model.queue.queue.clone(), int(model.queue.ptr)
    out["dense_queue"], out["dense_ptr"] = model.dense_queue.queue.clone(), int(model.dense_queue.ptr)
    return out


def test_ddp_queues_identical_on_every_rank_and_shuffle_bn():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 2, 2, 3, 64, 64, generator=g) * 255  # (rank, image, view, C, H, W)
    ranks = run_in_gloo_processes(_ddp_densecl_worker, 2, images)
    both = torch.cat([r["shuffled"] for r in ranks]).flatten()
    assert sorted(both.tolist()) == [0, 1, 2, 3, 10, 11, 12, 13]
    assert all(r["roundtrip"] for r in ranks)
    a, b = ranks
    assert a["ptr"] == b["ptr"] == 4 and a["dense_ptr"] == b["dense_ptr"] == 4  # 2 keys from each rank
    assert torch.equal(a["queue"], b["queue"]) and torch.equal(a["dense_queue"], b["dense_queue"])
    # the global batch's keys are in the queue: every rank's key encoder outputs, in some order
    enqueued = a["queue"][:, :4].T
    computed = torch.cat([a["keys"], b["keys"]])
    dist = torch.cdist(computed, enqueued)
    assert (dist.min(dim=1).values < 1e-5).all()
    assert all(torch.isfinite(v) for r in ranks for v in r["loss"].values())


def test_densecl_paper_config_carries_the_paper_numbers():
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(project_config_path("densecl_r50.yaml"))
    ssl, solver, densecl = cfg.MODEL.SSL, cfg.SOLVER, cfg.MODEL.DENSECL
    assert cfg.MODEL.META_ARCHITECTURE == "DenseCL" and cfg.MODEL.RESNETS.NORM == "BN" and ssl.SHUFFLE_BN
    assert (densecl.LOSS_WEIGHT, densecl.GRID_SIZE, densecl.WARMUP_ITERS) == (0.5, 0, 0)
    assert (ssl.PROJ_HIDDEN_DIM, ssl.PROJ_DIM, ssl.HEAD_NORM) == (2048, 128, "")
    assert (ssl.MOMENTUM, ssl.MOMENTUM_SCHEDULE, ssl.TEMPERATURE, ssl.QUEUE_SIZE) == (0.999, "constant", 0.2, 65536)
    assert (solver.OPTIMIZER, solver.BASE_LR, solver.IMS_PER_BATCH, solver.WEIGHT_DECAY) == ("SGD", 0.03, 256, 1e-4)
    assert (solver.WEIGHT_DECAY_NORM, solver.EPOCHS, solver.WARMUP_ITERS, solver.COSINE_PER_EPOCH) == (1e-4, 200, 0, True)
    assert not ssl.ZERO_INIT_RESIDUAL
