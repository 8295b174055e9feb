"""DetCon: the loss against hand / loop computations, mask downsampling, sampling
and pooling, the DetCon-B / DetCon-S / FPN meta-architectures on real mapper
batches, DDP negatives from every process, checkpoint round trip, paper config."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from detcon_reference import reference_detcon_loss_terms
from dist_utils import run_in_gloo_processes

from soco_d2 import get_pretrain_cfg
from config_utils import project_config_path
from soco_d2.data.mappers import build_ssl_mapper
from soco_d2.modeling import losses
from soco_d2.modeling.losses import detcon_loss, detcon_loss_terms
from soco_d2.data.masks import MaskGrids, majority_vote, mask_levels, present_ids
from soco_d2.modeling.mask_pooling import mask_pool, pool_masks
from soco_d2.modeling.gather import all_gather_with_grad
from soco_d2.modeling.meta_arch.detcon import DetCon, contrast_across_processes


# --------------------------------------------------------------------------- loss references


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _unit(v):
    n = math.sqrt(_dot(v, v))
    return [x / n for x in v]


def reference_direction(p, t_cross, t_same, ids_q, ids_c, temperature, local_negatives):
    """One direction of the official loss, written with plain loops over python floats."""
    num_images, num_masks = len(p), len(p[0])
    total = 0.0
    for b in range(num_images):
        for m in range(num_masks):
            query = _unit(p[b][m])
            logits, labels = [], []
            for b2 in range(len(t_cross)):
                for k in range(num_masks):
                    same_image, same_id = b2 == b, ids_c[b][k] == ids_q[b][m]
                    if same_image and not same_id and not local_negatives:
                        continue  # removed (-1e9)
                    logits.append(_dot(query, _unit(t_cross[b2][k])) / temperature)
                    labels.append(1.0 if same_image and same_id else 0.0)
            for b2 in range(len(t_same)):
                for k in range(num_masks):
                    if b2 == b and (ids_q[b][k] == ids_q[b][m] or not local_negatives):
                        continue  # own mask in its own view, or no local negatives
                    logits.append(_dot(query, _unit(t_same[b2][k])) / temperature)
                    labels.append(0.0)
            num_pos = sum(labels)
            if num_pos == 0:
                continue  # id not sampled in the other view: weight 0
            duplicates = sum(1 for k in range(num_masks) if ids_q[b][k] == ids_q[b][m])
            top = max(logits)
            log_z = top + math.log(sum(math.exp(x - top) for x in logits))
            loss = -sum(lab / num_pos * (x - log_z) for lab, x in zip(labels, logits))
            total += loss / duplicates
    return total / (num_images * num_masks)


def reference_detcon(p1, p2, t1, t2, ids1, ids2, temperature=0.1, local_negatives=True):
    args = (temperature, local_negatives)
    return reference_direction(p1, t2, t1, ids1, ids2, *args) + reference_direction(p2, t1, t2, ids2, ids1, *args)


# ids with duplicates (image 0: id 2 twice in view 1), ids absent from the other view
# (image 0: id 5 only in view 1; image 1: id 3 only in view 1, id 7 only in view 2) and the same id in
# different images (id 1: must not match across images)
IDS1 = torch.tensor([[2, 2, 1, 5], [1, 3, 3, 0], [4, 0, 1, 1]])
IDS2 = torch.tensor([[1, 2, 3, 3], [7, 1, 0, 0], [1, 4, 4, 0]])


def random_inputs(seed=0, num_images=3, num_masks=4, dim=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(num_images, num_masks, dim, generator=g, dtype=torch.float64) for _ in range(4)]


@pytest.mark.parametrize("local_negatives", [True, False])
def test_detcon_loss_equals_loop_reference(local_negatives):
    p1, p2, t1, t2 = random_inputs()
    ours = detcon_loss(p1, p2, t1, t2, IDS1, IDS2, 0.1, local_negatives)
    ref = reference_detcon(p1.tolist(), p2.tolist(), t1.tolist(), t2.tolist(), IDS1.tolist(), IDS2.tolist(),
                           0.1, local_negatives)
    assert ours.item() == pytest.approx(ref, rel=1e-5)
    l12, l21 = detcon_loss_terms(p1, p2, t1, t2, IDS1, IDS2, 0.1, local_negatives)
    assert (l12 + l21).item() == pytest.approx(ours.item(), rel=1e-6)


def test_detcon_loss_by_hand_cross_image_negatives_and_own_mask_removed():
    # image 0: every vector e1, image 1: every vector e2; one mask per image (id 0 in both views).
    # With T = 0.5 a query of image 0 sees: positive e1.e1/T = 2, the other image in the other
    # view 0, its own mask in its own view removed (else another e^2), the other image in its
    # own view 0: loss = -log(e^2 / (e^2 + 2)) for each of the 2 x 2 queries; mean per
    # direction, 2 directions summed.
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    x = torch.stack([e1, e2])[:, None, :] * 3.0  # raw (unnormalised) inputs
    ids = torch.zeros(2, 1, dtype=torch.long)
    expected = 2 * math.log(1 + 2 * math.exp(-2))
    assert detcon_loss(x, x, x, x, ids, ids, temperature=0.5).item() == pytest.approx(expected, rel=1e-5)
    # without cross-image negatives (one image) nothing is left to contrast with
    assert detcon_loss(x[:1], x[:1], x[:1], x[:1], ids[:1], ids[:1]).item() == pytest.approx(0.0, abs=1e-6)


def test_absent_ids_have_zero_weight_and_duplicates_share_weight_one():
    p1, p2, t1, t2 = random_inputs(1)
    p1.requires_grad_(True)
    detcon_loss(p1, p2, t1, t2, IDS1, IDS2).backward()
    grad_norm = p1.grad.norm(dim=-1)
    # id 5 of image 0 and id 3 of image 1 are not in view 2: no loss term, so no gradient
    absent = ~(IDS1[:, :, None] == IDS2[:, None, :]).any(dim=2)
    assert absent.nonzero().tolist() == [[0, 3], [1, 1], [1, 2]]
    assert (grad_norm[absent] == 0).all() and (grad_norm[~absent] > 0).all()
    # a mask drawn twice (same prediction in both slots) counts as one query of weight 1:
    # L(1->2) of image 0 = [l(id 2) + l(id 1)] / M, whatever the duplicate count
    p1 = p1.detach().clone()
    p1[0, 1] = p1[0, 0]
    single = reference_direction(p1[:1].tolist(), t2[:1].tolist(), t1[:1].tolist(), IDS1[:1].tolist(),
                                 IDS2[:1].tolist(), 0.1, True)
    ours, _ = detcon_loss_terms(p1[:1], p2[:1], t1[:1], t2[:1], IDS1[:1], IDS2[:1])
    assert ours.item() == pytest.approx(single, rel=1e-5)


@pytest.mark.parametrize("local_negatives, num_negatives", [(True, 6), (False, 4)])
def test_local_negatives_by_hand(local_negatives, num_negatives):
    # image 0: id 0 -> e1, id 1 -> e2; image 1: id 0 -> e3, id 1 -> e4 (both views). At T = 0.5 a
    # query sees its positive at 2 and every other kept entry at 0: the other mask of its image in
    # both views (2, removed without local negatives) and the 4 masks of the other image:
    # loss = log(1 + n e^-2) for each of the 8 queries, per direction, 2 directions summed.
    x = torch.eye(4).view(2, 2, 4)
    ids = torch.tensor([[0, 1], [0, 1]])
    expected = 2 * math.log(1 + num_negatives * math.exp(-2))
    ours = detcon_loss(x, x, x, x, ids, ids, temperature=0.5, local_negatives=local_negatives)
    assert ours.item() == pytest.approx(expected, rel=1e-5)


def test_same_id_in_another_image_is_a_negative():
    # two images whose single mask (id 0) has the same vector e1 everywhere: the other image's
    # copies are negatives, not positives: each query -log(e^2 / 3 e^2) = log 3 (T = 0.5)
    x = torch.tensor([1.0, 0.0]).expand(2, 1, 2)
    ids = torch.zeros(2, 1, dtype=torch.long)
    assert detcon_loss(x, x, x, x, ids, ids, temperature=0.5).item() == pytest.approx(2 * math.log(3), rel=1e-5)


def test_target_offset_places_local_images_in_gathered_targets():
    p1, p2, t1, t2 = random_inputs(3, num_images=4)
    ids1 = torch.cat([IDS1, IDS1[:1]])
    ids2 = torch.cat([IDS2, IDS2[:1]])
    full_12, full_21 = detcon_loss_terms(p1, p2, t1, t2, ids1, ids2)
    halves = [detcon_loss_terms(p1[i:i + 2], p2[i:i + 2], t1, t2, ids1[i:i + 2], ids2[i:i + 2], target_offset=i)
              for i in (0, 2)]
    assert (halves[0][0] + halves[1][0]).item() / 2 == pytest.approx(full_12.item(), rel=1e-6)
    assert (halves[0][1] + halves[1][1]).item() / 2 == pytest.approx(full_21.item(), rel=1e-6)


def _random_case(seed: int, other_images: bool):
    """Random raw inputs with few ids (so duplicates and ids absent from the other view are
    common), a local batch placed at a random offset inside the targets, and other images
    (cross-image negatives) present or not."""
    g = torch.Generator().manual_seed(seed)
    batch, num_masks, dim = 3, 5, 8
    num_images = batch + (4 if other_images else 0)
    preds = [torch.randn(batch, num_masks, dim, generator=g, dtype=torch.float64) for _ in range(2)]
    targets = [torch.randn(num_images, num_masks, dim, generator=g, dtype=torch.float64) for _ in range(2)]
    ids = [torch.randint(0, 4, (batch, num_masks), generator=g) for _ in range(2)]
    offset = int(torch.randint(0, num_images - batch + 1, (), generator=g))
    return preds, targets, ids, offset


@pytest.mark.parametrize("chunk_elements", [None, 1, 100], ids=["one-chunk", "row-chunks", "partial-chunks"])
@pytest.mark.parametrize("local_negatives", [True, False], ids=["local-neg", "no-local-neg"])
@pytest.mark.parametrize("other_images", [True, False], ids=["cross-image", "own-image-only"])
def test_lean_detcon_loss_equals_the_official_layout(other_images, local_negatives, chunk_elements, monkeypatch):
    """The chunked log-sum-exp form equals the official (B, M, 2 N M) log-softmax layout
    (tests/detcon_reference.py) in value and in every gradient, DetCon-S-style keys with
    gradient included."""
    if chunk_elements is not None:
        monkeypatch.setitem(losses.LOGIT_CHUNK_ELEMENTS, "cpu", chunk_elements)
    worst = 0.0
    for seed in range(5):
        (p1, p2), (t1, t2), (ids1, ids2), offset = _random_case(seed, other_images)
        inputs = [x.float().requires_grad_(True) for x in (p1, p2, t1, t2)]
        results = []
        for terms in (detcon_loss_terms, reference_detcon_loss_terms):
            l12, l21 = terms(*inputs, ids1, ids2, 0.1, local_negatives, target_offset=offset)
            grads = torch.autograd.grad(l12 + 2 * l21, inputs)  # unequal weights: each direction's gradient counts
            results.append([l12, l21, *grads])
        assert (results[0][0] + results[0][1]).item() > 0
        # float32 both: 1e-6 relative to each tensor's scale (losses ~3, a float32 ulp is 2.4e-7 there)
        worst = max(worst, max(((a - b).abs().max() / b.abs().max().clamp(min=1)).item() for a, b in zip(*results)))
    assert worst <= 1e-6


def test_lean_detcon_loss_under_bf16_autocast_stays_float32():
    (p1, p2), (t1, t2), (ids1, ids2), offset = _random_case(0, True)
    inputs = [x.float().requires_grad_(True) for x in (p1, p2, t1, t2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = detcon_loss_terms(inputs[0].bfloat16(), *inputs[1:], ids1, ids2, target_offset=offset)
        ref = reference_detcon_loss_terms(inputs[0].bfloat16(), *inputs[1:], ids1, ids2, target_offset=offset)
    assert all(x.dtype == torch.float32 for x in ours)
    assert torch.allclose(torch.stack(ours), torch.stack(ref), rtol=1e-3)
    grads = torch.autograd.grad(sum(ours), inputs)
    ref_grads = torch.autograd.grad(sum(ref), inputs)
    for grad, want in zip(grads, ref_grads):  # bf16 matmuls: ~1e-2 relative
        assert grad.dtype == torch.float32 and (grad - want).abs().max() <= 0.05 * want.abs().max()


# --------------------------------------------------------------------------- masks on the grid


def test_majority_vote_matches_loop_count_with_ties_to_lowest_id():
    rng = np.random.default_rng(0)
    for b, corner in enumerate([[[3, 3, 1], [1, 2, 2], [0, 0, 0]],  # 3 zeros win
                                [[3, 3, 1], [1, 2, 2], [0, 2, 1]]]):  # 1, 2 tie (3 each) -> 1
        id_map = rng.integers(0, 4, (6, 9))
        id_map[:3, :3] = corner
        owners = majority_vote(id_map, (2, 3), stride=3)
        assert owners.shape == (2, 3)
        for i in range(2):
            for j in range(3):
                cell = id_map[3 * i:3 * i + 3, 3 * j:3 * j + 3].ravel().tolist()
                counts = [cell.count(v) for v in range(4)]
                assert owners[i, j] == counts.index(max(counts))
        assert owners[0, 0] == b  # 0 wins, then the tie goes to 1
        # a grid reaching past the map: cells without pixels belong to no mask
        owners = majority_vote(id_map[:6, :6], (3, 3), stride=3)
        assert (owners[2, :] == -1).all() and (owners[:2, :2] >= 0).all()


def test_segment_without_a_majority_cell_vanishes():
    id_map = np.zeros((4, 4), dtype=np.int64)
    id_map[0, 0] = 1  # one pixel of id 1 in a 2x2 cell
    owners = majority_vote(id_map, (2, 2), stride=2)
    assert present_ids(owners, 2).tolist() == [True, False]


def test_mask_sampling_draws_only_present_ids_with_replacement():
    id_map = np.zeros((8, 8), dtype=np.int64)
    id_map[:, 4:] = 2
    id_map[0, 0] = 1  # one pixel: owns no 4x4 cell, never sampled
    grids = MaskGrids(["res2"], num_masks=400)  # stride 4: a 2x2 grid
    np.random.seed(0)
    masks = grids.layout(id_map, 3)
    assert set(masks.ids.tolist()) == {0, 2} and masks.num_present == 2
    assert 150 < int((masks.ids == 0).sum()) < 250  # uniform over the present ids
    assert masks.owners[0].dtype == torch.int16 and masks.owners[0].tolist() == [[0, 2], [0, 2]]
    assert masks.levels.tolist() == [0] * 400


def test_mask_pool_is_the_mean_over_owned_cells():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 2, 3, generator=g)
    owners = torch.tensor([[[0, 0, 1], [2, 1, 1]], [[4, 4, 4], [4, 0, -1]]])
    ids = torch.tensor([[1, 0, 2, 3], [4, 0, 0, 1]])
    pooled = mask_pool(features, owners, ids)
    for b in range(2):
        for k in range(4):
            cells = [(i, j) for i in range(2) for j in range(3) if owners[b, i, j] == ids[b, k]]
            want = sum((features[b, :, i, j] for i, j in cells), torch.zeros(3)) / max(len(cells), 1)
            assert torch.allclose(pooled[b, k], want, atol=1e-6)
    assert (pooled[0, 3] == 0).all()  # id 3 owns no cell


def test_mask_pool_equals_area_weighted_mean_of_the_region():
    # masks aligned with the cells: pooling equals the pixel-area-weighted mean of the
    # (nearest-upsampled) feature map over the mask's pixels
    g = torch.Generator().manual_seed(1)
    features = torch.randn(1, 4, 3, 3, generator=g)
    cell_ids = torch.tensor([[[0, 0, 1], [2, 1, 1], [2, 2, 1]]])
    pixel_ids = cell_ids.repeat_interleave(8, 1).repeat_interleave(8, 2)  # stride 8, 24 px
    owners = torch.from_numpy(majority_vote(pixel_ids[0].numpy(), (3, 3), stride=8))[None]
    assert torch.equal(owners, cell_ids)
    pixel_features = F.interpolate(features, scale_factor=8, mode="nearest")
    ids = torch.tensor([[0, 1, 2]])
    pooled = mask_pool(features, owners, ids)
    for k, mask_id in enumerate(ids[0].tolist()):
        mask = (pixel_ids[0] == mask_id).float()
        want = (pixel_features[0] * mask).sum(dim=(1, 2)) / mask.sum()
        assert torch.allclose(pooled[0, k], want, atol=1e-5)


def test_mask_levels_follow_soco_thresholds_on_pixel_area():
    id_map = np.zeros((100, 100), dtype=np.int64)
    id_map[:40, :40] = 1  # sqrt(1600) = 40 -> level 0 (<= 48)
    id_map[40:90, :90] = 2  # sqrt(4500) = 67 -> level 1
    id_map[90:, :] = 3  # sqrt(1000) = 31.6 -> level 0
    # id 0: the rest, 100*100 - 1600 - 4500 - 1000 = 2900 -> 53.9 -> level 1
    assert mask_levels(id_map, 5, [48, 96, 192]).tolist() == [1, 0, 1, 0, 0]  # id 4 absent: area 0
    assert mask_levels(np.zeros((48, 48), np.int64), 1, [48, 96, 192]).tolist() == [0]  # sqrt = 48: <= 48
    assert mask_levels(np.zeros((100, 100), np.int64), 1, [48, 96, 192]).tolist() == [2]  # (96, 192] -> 2
    assert mask_levels(np.zeros((200, 200), np.int64), 1, [48, 96, 192]).tolist() == [3]


def test_fpn_pool_takes_each_mask_from_its_level():
    # two levels: 4x4 (stride 2) and 2x2 (stride 4) of an 8x8 id map; level features are
    # constant per level (10 and 20) so the pooled value tells which level was used
    grids = MaskGrids(["p1", "p2"], thresholds=(3.0,))
    maps = np.zeros((8, 8), dtype=np.int64)
    maps[:2, :2] = 1  # 4 px -> sqrt 2 <= 3 -> level 0
    owners, levels, present = grids.assign(maps, 2)
    assert levels.tolist() == [1, 0] and present.tolist() == [True, True]
    assert owners[1].tolist() == [[0, 0], [0, 0]]  # id 1 owns no cell of the coarse grid
    features = [torch.full((1, 3, 4, 4), 10.0), torch.full((1, 3, 2, 2), 20.0)]
    ids = torch.tensor([[0, 1, 1]])
    owners, levels = [torch.from_numpy(o)[None] for o in owners], torch.from_numpy(levels)
    pooled = pool_masks(features, owners, ids, levels[ids])
    assert pooled[0, :, 0].tolist() == [20.0, 10.0, 10.0]
    # a thin segment owning no cell of its level's grid falls back to the finest level where it owns one
    maps = np.zeros((8, 8), dtype=np.int64)
    maps[:, 0:2] = 1  # 16 px, sqrt 4 > 3 -> level 1 (2x2 grid, 4x4 cells: 8 of 16 px, tie -> id 0)
    owners, levels, present = grids.assign(maps, 2)
    assert not (owners[1] == 1).any() and (owners[0] == 1).any()
    assert levels.tolist() == [1, 0] and present.tolist() == [True, True]
    # a backbone that pads the view has more cells than the view: they belong to no mask
    owners, levels = [torch.from_numpy(o)[None] for o in owners], torch.from_numpy(levels)
    pooled = pool_masks([torch.ones(1, 3, 6, 6), torch.ones(1, 3, 3, 3)], owners, ids, levels[ids])
    assert torch.allclose(pooled, torch.ones(1, 3, 3))


# --------------------------------------------------------------------------- meta-architectures

TINY = [
    "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.SSL.PROJ_HIDDEN_DIM", 64, "MODEL.SSL.PROJ_DIM", 32, "INPUT.SSL.VIEW_SIZES", [64, 64],
    "MODEL.DETCON.MASK_SOURCE", "grid", "MODEL.DETCON.GRID_SIZE", 4, "MODEL.DETCON.NUM_MASKS", 6,
    "MODEL.DETCON.LEVEL_THRESHOLDS", [12, 24, 48], "DATALOADER.NUM_WORKERS", 0,
]


def tiny_cfg(name, *opts):
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(project_config_path(f"demo/{name}.yaml"))
    cfg.merge_from_list(TINY + list(opts))
    if cfg.MODEL.DETCON.VARIANT == "B":
        cfg.MODEL.SSL.PRED_HIDDEN_DIM = 64
    return cfg


def detcon_batch(name):
    """Real DetConMapper outputs (grid masks, laid out for the config's levels) for the first demo photos."""
    mapper = build_ssl_mapper(tiny_cfg(name))
    torch.manual_seed(0)
    np.random.seed(0)
    return [mapper(d) for d in DatasetCatalog.get("demo_images")[:3]]


def run_losses(model, batch):
    with EventStorage(0):
        return model(batch)


@pytest.mark.parametrize("name", ["detcon_b_r50", "detcon_s_r50", "detcon_b_r50_fpn"])
def test_detcon_forward_backward_on_mapper_batch(name):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(name))
    model.train()
    projections = {"online": [], "target": []}
    model.projector.register_forward_hook(lambda m, i, o: projections["online"].append(o.detach()))
    if model.target is not None:
        model.target.projector.register_forward_hook(lambda m, i, o: projections["target"].append(o.detach()))
    losses = run_losses(model, detcon_batch(name))
    assert set(losses) == {"loss_detcon_12", "loss_detcon_21"}
    if model.target is not None:
        # at init target == online, so equal projections prove the target pooled the same sampled masks
        assert len(projections["online"]) == len(projections["target"]) == 2
        assert all(torch.allclose(o, t, atol=1e-5) for o, t in zip(projections["online"], projections["target"]))
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    resnet = getattr(model.backbone, "bottom_up", model.backbone)
    assert resnet.stem.conv1.weight.grad.abs().sum() > 0  # (zero-gamma: residual convs start at 0 grad)
    assert model.projector.fc2.bias is None  # DetCon heads: last Linear without bias
    keys = model.state_dict().keys()
    if name == "detcon_s_r50":
        assert model.target is None and model.predictor is None
        assert not any(k.startswith(("target.", "predictor.")) for k in keys)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.momentum_update(0.5)  # no-op
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    else:
        assert any(k.startswith("target.backbone.") for k in keys) and any(k.startswith("predictor.") for k in keys)
        assert all(p.grad is None for p in model.target.parameters())
    if name == "detcon_b_r50_fpn":
        assert any(k.startswith("backbone.fpn_output2.") for k in keys)
        assert model.backbone.fpn_output2.weight.grad is not None


def test_detcon_checkpoint_round_trip_restores_target(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg("detcon_b_r50")
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    model.momentum_update(0.5)  # target now differs from both init and online
    DetectionCheckpointer(model, str(tmp_path)).save("model_test")
    torch.manual_seed(1)
    fresh = build_model(cfg)
    assert not torch.equal(fresh.target.backbone.stem.conv1.weight, model.target.backbone.stem.conv1.weight)
    DetectionCheckpointer(fresh).load(str(tmp_path / "model_test.pth"))
    saved, loaded = model.state_dict(), fresh.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


# --------------------------------------------------------------------------- DDP


def _ddp_detcon_worker(full):
    from detectron2.utils import comm

    rank = comm.get_rank()
    rows = slice(rank * 2, rank * 2 + 2)
    out = {}
    # DetCon-B: targets (no grad) gathered from every process
    p1, p2, t1, t2, ids1, ids2 = [full[k][rows].clone() for k in ("p1", "p2", "t1", "t2", "ids1", "ids2")]
    l12, l21 = contrast_across_processes([p1, p2], [t1, t2], [ids1, ids2], 0.1, True, keys_need_grad=False)
    out["loss_b"] = (l12 + l21).detach()
    # DetCon-S: the projections are queries and keys, gathered with gradient
    p1.requires_grad_(True)
    p2.requires_grad_(True)
    l12, l21 = contrast_across_processes([p1, p2], [p1, p2], [ids1, ids2], 0.1, True, keys_need_grad=True)
    (l12 + l21).backward()
    out["loss_s"] = (l12 + l21).detach()
    out["grad_s"] = torch.cat([p1.grad, p2.grad])
    # fp16 keys (autocast) are gathered, and their gradients summed over ranks, in float32
    import torch.distributed as dist

    half = p1.detach().half().requires_grad_(True)
    reduced_dtypes, all_reduce = [], dist.all_reduce
    dist.all_reduce = lambda t, *a, **k: reduced_dtypes.append(t.dtype) or all_reduce(t, *a, **k)
    try:
        gathered = all_gather_with_grad(half)
        (gathered * (rank + 1)).sum().backward()  # rank r weighs every gathered row by r + 1
    finally:
        dist.all_reduce = all_reduce
    out["half"] = {"gathered": gathered.dtype, "reduced": reduced_dtypes, "grad": half.grad}
    return out


def test_ddp_negatives_come_from_every_process():
    """2 gloo processes with 2 images each: the mean of their losses (DDP's gradient
    mean) equals the single-process loss of the 4-image batch, for DetCon-B's gathered
    targets and DetCon-S's gathered-with-gradient projections (gradients too)."""
    g = torch.Generator().manual_seed(0)
    full = {k: torch.randn(4, 4, 5, generator=g) for k in ("p1", "p2", "t1", "t2")}
    full["ids1"] = torch.cat([IDS1, IDS1[:1]])
    full["ids2"] = torch.cat([IDS2, IDS2[:1]])
    ranks = run_in_gloo_processes(_ddp_detcon_worker, 2, full)

    single_b = detcon_loss(full["p1"], full["p2"], full["t1"], full["t2"], full["ids1"], full["ids2"])
    assert (sum(r["loss_b"] for r in ranks) / 2).item() == pytest.approx(single_b.item(), rel=1e-5)
    alone = detcon_loss(full["p1"][:2], full["p2"][:2], full["t1"][:2], full["t2"][:2], IDS1[:2], IDS2[:2])
    assert ranks[0]["loss_b"].item() != pytest.approx(alone.item(), rel=1e-4)  # other rank's keys were used

    p1, p2 = full["p1"].clone().requires_grad_(True), full["p2"].clone().requires_grad_(True)
    single_s = detcon_loss(p1, p2, p1, p2, full["ids1"], full["ids2"])
    single_s.backward()
    assert (sum(r["loss_s"] for r in ranks) / 2).item() == pytest.approx(single_s.item(), rel=1e-5)
    for rank, out in enumerate(ranks):
        rows = slice(rank * 2, rank * 2 + 2)
        assert torch.allclose(out["grad_s"] / 2, torch.cat([p1.grad[rows], p2.grad[rows]]), atol=1e-6)
        half = out["half"]
        assert half["gathered"] == torch.float32 and half["reduced"] == [torch.float32]
        assert half["grad"].dtype == torch.float16 and (half["grad"] == 1 + 2).all()  # summed over both ranks


# --------------------------------------------------------------------------- paper config


def test_detcon_paper_configs_carry_the_paper_numbers():
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(project_config_path("detcon_b_r50.yaml"))
    ssl, solver, view = cfg.MODEL.SSL, cfg.SOLVER, cfg.INPUT.SSL
    assert cfg.MODEL.META_ARCHITECTURE == "DetCon" and cfg.MODEL.DETCON.VARIANT == "B"
    assert cfg.MODEL.DETCON.IN_FEATURES == ["res5"] and cfg.MODEL.DETCON.NUM_MASKS == 16
    assert (ssl.PROJ_HIDDEN_DIM, ssl.PROJ_DIM, ssl.PRED_HIDDEN_DIM, ssl.HEAD_LAST_BIAS) == (4096, 256, 4096, False)
    assert (ssl.MOMENTUM, ssl.MOMENTUM_SCHEDULE, ssl.TEMPERATURE) == (0.996, "cosine", 0.1)
    assert (solver.OPTIMIZER, solver.BASE_LR * solver.IMS_PER_BATCH / solver.REFERENCE_BATCH_SIZE) == ("LARS", 3.2)
    assert (solver.WEIGHT_DECAY, solver.LARS_ETA, solver.EPOCHS, solver.WARMUP_EPOCHS) == (1.5e-6, 1e-3, 1000, 10)
    assert (solver.WARMUP_FACTOR, solver.COSINE_END_LR, solver.LARS_EXCLUDE_1D) == (0.0, 0.0, True)
    assert (view.VIEW_SIZES, tuple(view.CROP_SCALE), view.CROP_ATTEMPTS) == ([224, 224], (0.08, 1.0), 1)
    assert (view.INTERPOLATION, view.BLUR_PROBS, view.SOLARIZE_PROBS) == ("bicubic", [1.0, 0.1], [0.0, 0.2])
    fpn = get_pretrain_cfg()
    fpn.merge_from_file(project_config_path("detcon_b_r50_fpn.yaml"))
    assert fpn.MODEL.DETCON.IN_FEATURES == ["p2", "p3", "p4", "p5"]
    assert fpn.MODEL.DETCON.LEVEL_THRESHOLDS == cfg.MODEL.SOCO.LEVEL_THRESHOLDS == [48, 96, 192]
    s = get_pretrain_cfg()
    s.merge_from_file(project_config_path("detcon_s_r50.yaml"))
    assert s.MODEL.DETCON.VARIANT == "S" and s.MODEL.SSL.PRED_HIDDEN_DIM == 0 and s.MODEL.SSL.TEMPERATURE == 0.1
