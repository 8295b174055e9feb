"""MoCo-v2: the InfoNCE loss against a loop reference, the negatives queue
(FeatureQueue: enqueue, pointer, wrap-around, checkpoint), the meta-architecture
on a real ImageLevelMapper batch, checkpoint round trip and the paper config."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from queue_model_utils import tiny_cfg as tiny_queue_cfg
from queue_model_utils import two_view_samples

from soco_d2 import get_pretrain_cfg
from config_utils import project_config_path
from soco_d2.modeling.losses import infonce_loss
from soco_d2.modeling.queue import FeatureQueue


def reference_infonce(q, k, queue, temperature):
    """-log exp(q.k/T) / (exp(q.k/T) + sum_m exp(q.queue_m/T)), mean over rows, plain loops."""
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    columns = [list(col) for col in zip(*queue)]
    total = 0.0
    for qi, ki in zip(q, k):
        qi, ki = unit(qi), unit(ki)
        pos = sum(a * b for a, b in zip(qi, ki)) / temperature
        negs = [sum(a * b for a, b in zip(qi, col)) / temperature for col in columns]
        total += -pos + math.log(math.exp(pos) + sum(math.exp(x) for x in negs))
    return total / len(q)


def test_global_infonce_equals_loop_reference():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    queue = F.normalize(torch.randn(4, 6, generator=g, dtype=torch.float64), dim=0)
    ref = reference_infonce(q.tolist(), k.tolist(), queue.tolist(), 0.2)
    assert infonce_loss(q, k, queue, 0.2).item() == pytest.approx(ref, rel=1e-5)
    # the key is a stop-gradient; the query gets the gradient
    q.requires_grad_(True)
    k.requires_grad_(True)
    infonce_loss(q, k, queue).backward()
    assert k.grad is None and q.grad.abs().sum() > 0


# --------------------------------------------------------------------------- FeatureQueue


def test_queue_starts_with_unit_columns_and_pointer_zero():
    queue = FeatureQueue(8, 16)
    assert queue.queue.shape == (8, 16) and int(queue.ptr) == 0
    assert torch.allclose(queue.queue.norm(dim=0), torch.ones(16), atol=1e-6)
    assert {"queue", "ptr"} <= set(dict(queue.named_buffers()))


def test_queue_enqueue_dequeue_and_wrap_around():
    queue = FeatureQueue(2, 5)
    keys = torch.arange(16, dtype=torch.float32).view(8, 2)
    assert queue.filled == 0.0
    queue.enqueue(keys[:3])  # columns 0..2
    assert int(queue.ptr) == 3 and torch.equal(queue.queue[:, :3], keys[:3].T)
    assert queue.filled == pytest.approx(3 / 5)  # 2 columns still hold random initial keys
    old = queue.queue[:, 3:].clone()
    queue.enqueue(keys[3:6])  # columns 3, 4, then wraps to 0: the oldest key (keys[0]) is dequeued
    assert int(queue.ptr) == 1 and queue.filled == 1.0
    assert torch.equal(queue.queue[:, 3:], keys[3:5].T) and not torch.equal(queue.queue[:, 3:], old)
    assert torch.equal(queue.queue[:, 0], keys[5]) and torch.equal(queue.queue[:, 1:3], keys[1:3].T)
    queue.enqueue(keys)  # more keys than slots: only the newest 5 survive, in FIFO order
    assert int(queue.ptr) == (1 + 5) % 5
    assert sorted(map(tuple, queue.queue.T.tolist())) == sorted(map(tuple, keys[3:].tolist()))
    assert torch.equal(queue.queue[:, 1], keys[3])


# --------------------------------------------------------------------------- meta-architecture

def tiny_cfg(name="mocov2_r50", *opts):
    return tiny_queue_cfg(name, *opts)


@pytest.fixture(scope="module")
def two_view_batch():
    return two_view_samples("mocov2_r50")


def test_mocov2_forward_backward_enqueues_the_keys(two_view_batch):
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    model.train()
    assert model.projector.norm is None and torch.count_nonzero(model.projector.fc1.bias) == 0  # Kaiming, bias 0
    captured = []
    model.target.projector.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    old = model.queue.queue.clone()
    with EventStorage(0):
        losses = model(two_view_batch)
    assert set(losses) == {"loss_contra"} and torch.isfinite(losses["loss_contra"])
    losses["loss_contra"].backward()
    assert model.projector.fc2.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.target.parameters())
    # the 3 normalised keys went to columns 0..2, the rest of the queue is untouched
    assert int(model.queue.ptr) == 3
    assert torch.allclose(model.queue.queue[:, :3], F.normalize(captured[0], dim=1).T, atol=1e-6)
    assert torch.equal(model.queue.queue[:, 3:], old[:, 3:])
    keys = model.state_dict().keys()
    assert {"queue.queue", "queue.ptr"} <= set(keys)
    assert any(k.startswith("target.backbone.") for k in keys) and any(k.startswith("target.projector.") for k in keys)


def test_mocov2_momentum_update_is_ema_of_the_key_encoder():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    online = model.backbone.stem.conv1.weight
    with torch.no_grad():
        online.add_(1.0)
    before = model.target.backbone.stem.conv1.weight.clone()
    model.momentum_update(0.999)
    assert torch.allclose(model.target.backbone.stem.conv1.weight, 0.999 * before + 0.001 * online, atol=1e-6)


def test_mocov2_checkpoint_round_trip_restores_queue_pointer_and_key_encoder(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg)
    model.queue.enqueue(F.normalize(torch.randn(6, 16), dim=1))  # 6 keys in an 8-slot queue
    with torch.no_grad():
        model.backbone.stem.conv1.weight.add_(0.5)
    model.momentum_update(0.9)
    DetectionCheckpointer(model, str(tmp_path)).save("model_test")
    torch.manual_seed(1)
    fresh = build_model(cfg)
    assert not torch.equal(fresh.queue.queue, model.queue.queue)
    DetectionCheckpointer(fresh).load(str(tmp_path / "model_test.pth"))
    assert int(fresh.queue.ptr) == 6
    saved, loaded = model.state_dict(), fresh.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_mocov2_paper_config_carries_the_paper_numbers():
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(project_config_path("mocov2_r50.yaml"))
    ssl, solver = cfg.MODEL.SSL, cfg.SOLVER
    assert cfg.MODEL.META_ARCHITECTURE == "MoCoV2" and cfg.MODEL.RESNETS.NORM == "BN" and ssl.SHUFFLE_BN
    assert (ssl.PROJ_HIDDEN_DIM, ssl.PROJ_DIM, ssl.HEAD_NORM, ssl.PRED_HIDDEN_DIM) == (2048, 128, "", 0)
    assert (ssl.MOMENTUM, ssl.MOMENTUM_SCHEDULE, ssl.TEMPERATURE, ssl.QUEUE_SIZE) == (0.999, "constant", 0.2, 65536)
    assert (solver.OPTIMIZER, solver.BASE_LR, solver.IMS_PER_BATCH, solver.REFERENCE_BATCH_SIZE) == ("SGD", 0.03, 256, 0)
    assert (solver.WEIGHT_DECAY, solver.WEIGHT_DECAY_NORM, solver.MOMENTUM) == (1e-4, 1e-4, 0.9)
    assert (solver.EPOCHS, solver.WARMUP_EPOCHS, solver.WARMUP_ITERS, solver.COSINE_PER_EPOCH) == (200, 0, 0, True)
    assert tuple(cfg.INPUT.SSL.CROP_SCALE) == (0.2, 1.0) and cfg.INPUT.SSL.BLUR_PROBS == [0.5]
