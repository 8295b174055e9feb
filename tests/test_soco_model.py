"""SoCo's model pieces: the loss, the scale-aware level rule, the pooler, and the
online/target split, on real detectron2 modules."""
import copy
import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from soco_d2 import get_pretrain_cfg
from soco_d2.modeling.encoder import zero_init_residual_
from soco_d2.modeling.losses import soco_loss
from soco_d2.modeling.momentum import ema_update_, momentum_at
from soco_d2.modeling.poolers import ScaleAwareROIPooler, soco_levels


def tiny_soco_cfg(region_head="FPN", **overrides):
    """SoCo with a ResNet-18 (weights do not matter here) and BN on one process."""
    cfg = get_pretrain_cfg()
    opts = [
        "MODEL.META_ARCHITECTURE", "SoCo", "MODEL.DEVICE", "cpu",
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
        "MODEL.RESNETS.NORM", "BN", "MODEL.RESNETS.STRIDE_IN_1X1", False, "MODEL.BACKBONE.FREEZE_AT", 0,
        "MODEL.SSL.HEAD_NORM", "BN", "MODEL.SSL.PROJ_HIDDEN_DIM", 64, "MODEL.SSL.PROJ_DIM", 32,
        "MODEL.SSL.PRED_HIDDEN_DIM", 64,
    ]
    if region_head == "FPN":
        opts += [
            "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone",
            "MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"],
            "MODEL.FPN.IN_FEATURES", ["res2", "res3", "res4", "res5"], "MODEL.FPN.NORM", "BN",
            "MODEL.FPN.OUT_CHANNELS", 64,
            "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead", "MODEL.ROI_BOX_HEAD.NUM_CONV", 4,
            "MODEL.ROI_BOX_HEAD.CONV_DIM", 64, "MODEL.ROI_BOX_HEAD.NUM_FC", 1, "MODEL.ROI_BOX_HEAD.FC_DIM", 128,
            "MODEL.ROI_BOX_HEAD.NORM", "BN",
        ]
    else:
        # R18's res5 is BasicBlock-free in detectron2's Res5ROIHeads (bottlenecks), so C4 uses R50 widths.
        opts += [
            "MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.RES2_OUT_CHANNELS", 256,
            "MODEL.BACKBONE.NAME", "build_resnet_backbone", "MODEL.RESNETS.OUT_FEATURES", ["res4"],
            "MODEL.SOCO.REGION_HEAD", "C4", "MODEL.SOCO.IN_FEATURES", ["res4"], "MODEL.SOCO.POOLER_RESOLUTION", 14,
        ]
    for key, value in overrides.items():
        opts += [key, value]
    cfg.merge_from_list(opts)
    return cfg


def random_batch(num_images, view_sizes, num_boxes=4, seed=0):
    """Mapper-format inputs: random views and, per pair (0, j), random boxes with shared ids."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        pairs = []
        for j in range(1, len(view_sizes)):
            sides = []
            for size in (view_sizes[0], view_sizes[j]):
                xy = torch.rand(num_boxes, 2, generator=g) * size * 0.5
                wh = torch.rand(num_boxes, 2, generator=g) * size * 0.4 + 8
                sides.append(torch.cat([xy, xy + wh], dim=1))
            ids = torch.randint(1, num_boxes, (num_boxes,), generator=g)
            pairs.append({"views": (0, j), "boxes": tuple(sides), "ids": (ids, ids[torch.randperm(num_boxes, generator=g)])})
        views = [torch.rand(3, s, s, generator=g) * 255 for s in view_sizes]
        batch.append({"image_id": "x", "views": views, "pairs": pairs})
    return batch


# ------------------------------------------------------------------ loss
def test_soco_loss_equals_hand_computation():
    torch.manual_seed(0)
    q, z = torch.randn(2, 3, 5), torch.randn(2, 4, 5)
    ids_q = torch.tensor([[1, 2, 2], [1, 1, 3]])
    ids_z = torch.tensor([[2, 2, 5, -2], [3, 1, 4, 4]])  # -2: an unassigned slot, never matches
    per_image = []
    for b in range(2):
        num, den = 0.0, 0.0
        for i in range(3):
            for j in range(4):
                if ids_q[b, i] == ids_z[b, j] and ids_q[b, i] >= 0:
                    qi, zj = q[b, i] / q[b, i].norm(), z[b, j] / z[b, j].norm()
                    num += float(qi @ zj)
                    den += 1.0
        per_image.append(num / (den + 1e-6))
    expected = -2.0 * sum(per_image) / 2
    assert soco_loss(q, z, ids_q, ids_z).item() == pytest.approx(expected, rel=1e-5)
    # identical embeddings of one-to-one matched boxes reach the minimum -2
    distinct = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert soco_loss(q, q * 3.0, distinct, distinct).item() == pytest.approx(-2.0, abs=1e-5)


def test_soco_loss_gradient_only_reaches_the_prediction():
    q = torch.randn(1, 2, 4, requires_grad=True)
    z = torch.randn(1, 2, 4, requires_grad=True)
    ids = torch.tensor([[1, 2]])
    soco_loss(q, z, ids, ids).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert z.grad is None


# ------------------------------------------------------------------ level assignment
@pytest.mark.parametrize(
    "side,level",
    [(10, 0), (48, 0), (48.5, 1), (96, 1), (97, 2), (192, 2), (193, 3), (224, 3), (300, 3)],
)
def test_soco_level_rule_on_hand_picked_sizes(side, level):
    """sqrt(area) in the view's pixels: <= 48 -> P2, <= 96 -> P3, <= 192 -> P4, else P5."""
    box = torch.tensor([[5.0, 7.0, 5.0 + side, 7.0 + side]])
    assert soco_levels(box, (48, 96, 192)).tolist() == [level]


def test_soco_level_rule_uses_area_not_sides():
    # 24 x 96 has sqrt(area) 48 -> P2 although one side is 96
    assert soco_levels(torch.tensor([[0.0, 0.0, 24.0, 96.0]]), (48, 96, 192)).tolist() == [0]


def _pooler(rule):
    return ScaleAwareROIPooler(
        output_size=7, scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32), sampling_ratio=0, pooler_type="ROIAlignV2",
        level_assignment=rule, thresholds=(48, 96, 192),
    )


def test_pooler_pools_each_box_from_its_assigned_level():
    """Each level's map holds its own constant, so the pooled value names the level used."""
    features = [torch.full((1, 2, 256 // s, 256 // s), float(level)) for level, s in enumerate((4, 8, 16, 32))]
    boxes = Boxes(torch.tensor([[0, 0, 40, 40], [0, 0, 90, 90], [10, 10, 150, 150], [0, 0, 250, 250.0]]))
    pooled = _pooler("soco")(features, [boxes])
    assert pooled.mean(dim=(1, 2, 3)).tolist() == [0.0, 1.0, 2.0, 3.0]
    # detectron2's rule differs on the same boxes (canonical 224 at P4: 40, 90 px -> P2, 140 -> P3, 250 -> P4)
    stock = _pooler("detectron2")(features, [boxes])
    reference = ROIPooler(7, (1 / 4, 1 / 8, 1 / 16, 1 / 32), 0, "ROIAlignV2")(features, [boxes])
    assert torch.equal(stock, reference)
    assert stock.mean(dim=(1, 2, 3)).tolist() == [0.0, 0.0, 1.0, 2.0]


def test_pool_all_levels_selects_the_same_embeddings():
    """The parity path (every box on every level) gives the standard path's
    embeddings once BN uses running statistics."""
    model = build_model(tiny_soco_cfg())
    model.eval()
    batch = model.prepare(random_batch(2, [96, 96]))
    feats = model.backbone(model.view_images(batch, 0, model.backbone.size_divisibility))
    plan, rows = batch["roi_plans"][0], batch["pairs"][0]["rows"][0]
    heads = [model.projector, model.predictor]
    with torch.no_grad():
        standard = model.region_embeddings(model.pool_view(feats, plan), plan, rows, 2, model.box_head, heads)
        model.pool_all_levels = True
        parity = model.region_embeddings(model.pool_view(feats, plan), plan, rows, 2, model.box_head, heads)
    assert standard.shape == (2, 4, 32)
    torch.testing.assert_close(parity, standard, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ model and target
@pytest.mark.parametrize("region_head,views", [("FPN", [64, 64, 32]), ("C4", [64, 64])])
def test_soco_forward_backward_and_online_target_split(region_head, views):
    model = build_model(tiny_soco_cfg(region_head))
    assert model.target is not None and set(model.target.keys()) == {"backbone", "box_head", "projector"}
    assert all(not p.requires_grad for p in model.target.parameters())
    batch = random_batch(2, views)
    with EventStorage(0):
        losses = model(batch)
    expected = {f"loss_soco_1{j + 1}" for j in range(1, len(views))}
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is None for p in model.target.parameters()), "no gradient may reach the target"
    online = [p for n, p in model.named_parameters() if not n.startswith("target.") and p.requires_grad]
    assert all(p.grad is not None for p in online), "every online parameter takes part in the loss"


def test_target_starts_equal_and_moves_by_exactly_tau():
    model = build_model(tiny_soco_cfg())
    for name in ("backbone", "box_head", "projector"):
        for p_online, p_target in zip(getattr(model, name).parameters(), model.target[name].parameters()):
            assert torch.equal(p_online, p_target)
    before = copy.deepcopy(model.target.state_dict())
    with torch.no_grad():
        for p in model.projector.parameters():
            p.add_(1.0)
    model.momentum_update(0.9)
    for (name, new), p_online in zip(model.target.projector.named_parameters(), model.projector.parameters()):
        old = before[f"projector.{name}"]
        torch.testing.assert_close(new, 0.9 * old + 0.1 * p_online)
    # buffers (BN running stats) are not averaged
    for name, buf in model.target.named_buffers():
        assert torch.equal(buf, before[name])


def test_momentum_schedule():
    assert momentum_at(0, 100, 0.99) == pytest.approx(0.99)
    assert momentum_at(50, 100, 0.99) == pytest.approx(0.995)
    assert momentum_at(100, 100, 0.99) == pytest.approx(1.0)
    assert momentum_at(25, 100, 0.99) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    assert momentum_at(70, 100, 0.999, "constant") == 0.999
    with pytest.raises(ValueError, match="MOMENTUM_SCHEDULE"):
        momentum_at(1, 10, 0.9, "linear")


def test_ema_update_rejects_mismatched_networks():
    with pytest.raises(ValueError, match="structure"):
        ema_update_(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)), 0.5)


def test_zero_init_residual_zeroes_last_norm_of_every_block():
    cfg = tiny_soco_cfg()
    model = build_model(cfg)
    bottom_up = model.backbone.bottom_up
    blocks = [m for name, m in bottom_up.named_modules() if name.count(".") == 1 and name.startswith("res")]
    assert len(blocks) == 8  # R18: 2 blocks x 4 stages
    assert all(torch.all(b.conv2.norm.weight == 0) for b in blocks)
    assert zero_init_residual_(torch.nn.Linear(2, 2)) == 0
    cfg.MODEL.SSL.ZERO_INIT_RESIDUAL = False
    plain = build_model(cfg)
    assert torch.all(plain.backbone.bottom_up.res2[0].conv2.norm.weight == 1)


def test_c4_region_head_is_detectron2_res5():
    model = build_model(tiny_soco_cfg("C4"))
    names = {k for k in model.state_dict() if k.startswith("box_head.")}
    assert "box_head.res5.0.shortcut.weight" in names and "box_head.res5.2.conv3.norm.running_var" in names
    assert model.projector.in_dim == 2048
