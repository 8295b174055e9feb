"""SoCo and image-level mappers: exact output format on the demo photos for every
variant, boxes in each view's final pixel frame (end to end), fallbacks, cutout,
colour probabilities, determinism under the loader's seeding."""
import functools
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from soco_d2 import get_pretrain_cfg
from soco_d2.data import SSL_MAPPER_REGISTRY, build_ssl_mapper
from soco_d2.data.mappers import ImageLevelMapper, SoCoMapper
from mapper_utils import demo_dicts, geometry_only, seed_all  # noqa: F401  (demo_dicts: a fixture)

MEAN = (123.675, 116.28, 103.53)

# The released scripts' view settings (docs/methods/soco.md, Views); the yaml configs carry the same values.
SOCO_VARIANTS = {
    "SoCo_FPN": dict(
        VIEW_SIZES=[224, 224, 112], VIEW_TYPES=["whole", "crop", "crop"], CROP_SCALE=(0.5, 1.0), CUTOUT_VIEWS=[1, 2], jitter=0.5
    ),
    "SoCo_C4": dict(VIEW_SIZES=[224, 224], VIEW_TYPES=["whole", "crop"], CROP_SCALE=(0.6, 1.0), CUTOUT_VIEWS=[1], jitter=0.0),
    "SoCo*": dict(
        VIEW_SIZES=[224, 224, 192, 112],
        VIEW_TYPES=["whole", "crop", "crop", "downsample:1"],
        CROP_SCALE=(0.5, 1.0),
        CUTOUT_VIEWS=[],
        jitter=0.5,
    ),
}


def base_cfg(photometric_on="mapper"):
    """Views coloured in the mapper (float32 0..255); tests/test_photometric.py covers "model"."""
    cfg = get_pretrain_cfg()
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = list(MEAN)
    cfg.INPUT.SSL.PHOTOMETRIC_ON = photometric_on
    return cfg


def soco_cfg(variant):
    v = SOCO_VARIANTS[variant]
    cfg = base_cfg()
    s = cfg.INPUT.SSL
    s.MAPPER = "SoCoMapper"
    s.VIEW_SIZES, s.VIEW_TYPES, s.CROP_SCALE, s.CUTOUT_VIEWS = v["VIEW_SIZES"], v["VIEW_TYPES"], v["CROP_SCALE"], v["CUTOUT_VIEWS"]
    s.COLOR_JITTER, s.BLUR_PROBS, s.SOLARIZE_PROBS = (0.4, 0.4, 0.2, 0.1), [1.0, 0.1], [0.0, 0.2]
    cfg.PROPOSALS.JITTER_PROB = v["jitter"]
    return cfg








@pytest.fixture(scope="module")
def demo_boxes(demo_dicts):
    """Random proposals per demo photo (float32 XYXY, original pixels); 'ihc' has none."""
    rng = np.random.default_rng(0)
    boxes = {}
    for d in demo_dicts:
        h, w = d["height"], d["width"]
        x1, y1 = rng.uniform(0, 0.8 * w, 30), rng.uniform(0, 0.8 * h, 30)
        bw, bh = rng.uniform(32, 0.5 * w, 30), rng.uniform(32, 0.5 * h, 30)
        boxes[d["image_id"]] = np.stack([x1, y1, np.minimum(x1 + bw, w), np.minimum(y1 + bh, h)], 1).astype(np.float32)
    boxes["ihc"] = np.zeros((0, 4), np.float32)
    return boxes


def check_views(out, sizes):
    assert isinstance(out["image_id"], str)
    assert len(out["views"]) == len(sizes)
    for view, size in zip(out["views"], sizes):
        assert isinstance(view, torch.Tensor) and view.dtype == torch.float32 and view.shape == (3, size, size)
        assert view.min() >= 0 and view.max() <= 255


@pytest.mark.parametrize("variant", sorted(SOCO_VARIANTS))
def test_soco_output_format_on_demo_photos(variant, demo_dicts, demo_boxes):
    cfg = soco_cfg(variant)
    mapper = SoCoMapper(cfg, box_source=demo_boxes)
    sizes, k = cfg.INPUT.SSL.VIEW_SIZES, cfg.PROPOSALS.NUM_PER_VIEW
    seed_all(0)
    for d in demo_dicts:
        out = mapper(d)
        assert set(out) == {"image_id", "views", "pairs"} and out["image_id"] == d["image_id"]
        check_views(out, sizes)
        assert [p["views"] for p in out["pairs"]] == [(0, j) for j in range(1, len(sizes))]
        for pair in out["pairs"]:
            assert set(pair) == {"views", "boxes", "ids"}
            for side, v in enumerate(pair["views"]):
                boxes, ids = pair["boxes"][side], pair["ids"][side]
                assert boxes.dtype == torch.float32 and boxes.shape == (k, 4)
                assert ids.dtype == torch.int64 and ids.shape == (k,)
                assert (boxes >= 0).all() and (boxes <= sizes[v]).all()
                assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            # every id is present on both sides; ids are proposal numbers 1..M
            assert set(pair["ids"][0].tolist()) == set(pair["ids"][1].tolist())
            assert pair["ids"][0].min() >= 1 and pair["ids"][0].max() <= max(len(demo_boxes[d["image_id"]]), 1)
        if d["image_id"] == "ihc":  # no proposals: the whole image is the one proposal
            assert all((p["ids"][0] == 1).all() and (p["ids"][1] == 1).all() for p in out["pairs"])
            for pair in out["pairs"]:
                np.testing.assert_allclose(pair["boxes"][1], [[0, 0] + [sizes[pair["views"][1]]] * 2] * k, atol=1e-4)
        if variant == "SoCo*":  # V4 = V2 downsampled: same ids, same V1 set, boxes halved (mirrored if flips differ)
            p12, p14 = out["pairs"][0], out["pairs"][2]
            assert torch.equal(p12["ids"][0], p14["ids"][0]) and torch.equal(p12["ids"][1], p14["ids"][1])
            assert torch.equal(p12["boxes"][0], p14["boxes"][0])
            half = p12["boxes"][1] * 0.5
            mirrored = torch.stack([112 - half[:, 2], half[:, 1], 112 - half[:, 0], half[:, 3]], 1)
            assert torch.allclose(p14["boxes"][1], half, atol=1e-4) or torch.allclose(p14["boxes"][1], mirrored, atol=1e-4)


# --------------------------------------------------------- boxes follow the views, end to end
def bit_painted_image(tmp_path, height=150, width=230, n=20, seed=0):
    """An image whose pixel bits say which proposals cover it (bit i of the 24 RGB bits = proposal i+1)."""
    rng = np.random.default_rng(seed)
    x1, y1 = rng.integers(0, width - 20, n), rng.integers(0, height - 20, n)
    x2 = np.minimum(x1 + rng.integers(10, 120, n), width)
    y2 = np.minimum(y1 + rng.integers(10, 90, n), height)
    boxes = np.stack([x1, y1, x2, y2], 1).astype(np.float32)
    bits = np.zeros((height, width), dtype=np.uint32)
    for i, (a, b, c, e) in enumerate(boxes.astype(int)):
        bits[b:e, a:c] |= np.uint32(1 << i)
    image = np.stack([(bits >> (8 * c)) & 255 for c in range(3)], axis=2).astype(np.uint8)
    path = tmp_path / "bits.png"
    Image.fromarray(image).save(path)
    return {"file_name": str(path), "image_id": "bits", "height": height, "width": width}, boxes


def view_bits(view: torch.Tensor) -> np.ndarray:
    arr = view.float().round().to(torch.int64).numpy()
    return arr[0] | (arr[1] << 8) | (arr[2] << 16)


def painted_box(bits: np.ndarray, proposal_id: int):
    ys, xs = np.nonzero(bits & (1 << (proposal_id - 1)))
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


@pytest.mark.parametrize("variant", sorted(SOCO_VARIANTS))
def test_soco_boxes_are_in_each_views_final_frame(variant, tmp_path):
    """Each carried box equals the painted extent of its proposal in that view's image (within a pixel)."""
    d, boxes = bit_painted_image(tmp_path)
    cfg = geometry_only(soco_cfg(variant))
    cfg.PROPOSALS.JITTER_PROB = 0.0
    cfg.INPUT.SSL.CUTOUT_VIEWS = []
    mapper = SoCoMapper(cfg, box_source={"bits": boxes})
    checked, v1_orientations = 0, set()
    for seed in range(12):
        seed_all(seed)
        out = mapper(d)
        bits = [view_bits(v) for v in out["views"]]
        # view 0 is the whole image: its box is the proposal scaled, mirrored when view 0 is flipped
        box, pid = out["pairs"][0]["boxes"][0][0].numpy(), out["pairs"][0]["ids"][0][0].item()
        scaled = boxes[pid - 1] * np.array([224 / 230, 224 / 150] * 2)
        mirrored = np.array([224 - scaled[2], scaled[1], 224 - scaled[0], scaled[3]])
        v1_orientations.add("plain" if np.allclose(box, scaled, atol=1e-3) else "flipped")
        if "flipped" in v1_orientations and not np.allclose(box, scaled, atol=1e-3):
            np.testing.assert_allclose(box, mirrored, atol=1e-3)
        for pair in out["pairs"]:
            for side, v in enumerate(pair["views"]):
                for box, pid in zip(pair["boxes"][side].numpy(), pair["ids"][side].tolist()):
                    painted = painted_box(bits[v], pid)
                    if painted is None:  # a sliver thinner than a view pixel
                        assert min(box[2] - box[0], box[3] - box[1]) < 2
                        continue
                    np.testing.assert_allclose(box, painted, atol=1.0)
                    checked += 1
    assert checked >= 80 and v1_orientations == {"plain", "flipped"}


def test_soco_v1_jitter_moves_only_view0_boxes(tmp_path):
    d, boxes = bit_painted_image(tmp_path)
    cfg = geometry_only(soco_cfg("SoCo_FPN"))
    cfg.PROPOSALS.JITTER_PROB, cfg.INPUT.SSL.CUTOUT_VIEWS = 1.0, []
    mapper = SoCoMapper(cfg, box_source={"bits": boxes})
    moved = 0
    for seed in range(5):
        seed_all(seed)
        out = mapper(d)
        bits = [view_bits(v) for v in out["views"]]
        for pair in out["pairs"]:
            j = pair["views"][1]
            for box, pid in zip(pair["boxes"][1].numpy(), pair["ids"][1].tolist()):
                painted = painted_box(bits[j], pid)
                if painted is not None:
                    np.testing.assert_allclose(box, painted, atol=1.0)
            for box, pid in zip(pair["boxes"][0].numpy(), pair["ids"][0].tolist()):
                painted = painted_box(bits[0], pid)
                w, h = painted[2] - painted[0], painted[3] - painted[1]
                # shift <= 10 % and size change <= 10 %: every corner within 20 % (plus a pixel)
                assert np.all(np.abs(box - painted) <= 0.2 * np.array([w, h, w, h]) + 1.0)
                moved += int(np.abs(box - painted).max() > 1.5)
        # the (0,1) and (0,2) copies of view 0 are jittered independently
    assert moved > 0


def test_soco_pair_without_candidates_and_retries(tmp_path):
    d, _ = bit_painted_image(tmp_path)
    cfg = soco_cfg("SoCo_FPN")
    mapper = SoCoMapper(cfg, box_source={"bits": np.array([[0, 0, 5, 5]], np.float32)})
    calls = []

    def far_crops(height, width):  # view 1 and 2 windows never touch the proposal
        calls.append(1)
        return [(0, 0, width, height), (100, 60, 100, 80), (120, 50, 90, 90)]

    mapper.sample_rects = far_crops
    seed_all(0)
    out = mapper(d)
    assert len(calls) == cfg.PROPOSALS.MAX_TRIES == 5
    for pair in out["pairs"]:  # the pair degenerates to the two whole views, id 1
        j = pair["views"][1]
        np.testing.assert_allclose(pair["boxes"][0], [[0, 0, 224, 224]] * 4)
        np.testing.assert_allclose(pair["boxes"][1], [[0, 0] + [cfg.INPUT.SSL.VIEW_SIZES[j]] * 2] * 4)
        assert pair["ids"][0].tolist() == [1] * 4 == pair["ids"][1].tolist()


def test_soco_k_and_padding(tmp_path):
    d, boxes = bit_painted_image(tmp_path)
    cfg = soco_cfg("SoCo_C4")
    cfg.PROPOSALS.NUM_PER_VIEW = 6
    seed_all(1)
    out = SoCoMapper(cfg, box_source={"bits": boxes[:2]})(d)  # at most 2 real boxes -> 4 duplicates
    ids0, ids1 = out["pairs"][0]["ids"]
    assert len(ids0) == len(ids1) == 6 and len(set(ids0.tolist())) <= 2 and set(ids0.tolist()) == set(ids1.tolist())
    seed_all(1)
    out = SoCoMapper(cfg, box_source={"bits": boxes})(d)
    ids0 = out["pairs"][0]["ids"][0]
    assert len(ids0) == 6


def test_soco_cutout_inside_the_flipped_boxes(tmp_path):
    """Cutout squares (pixels at the pixel mean, never a uint8 value) sit around the
    *flipped* view boxes; the proposals are all on the image's left, so un-flipped
    boxes would put them on the wrong side."""
    height, width = 120, 200
    image = np.full((height, width, 3), 255, np.uint8)
    image[::2] = 0
    path = tmp_path / "stripes.png"
    Image.fromarray(image).save(path)
    d = {"file_name": str(path), "image_id": "stripes", "height": height, "width": width}
    props = np.array([[5, 10, 60, 70], [10, 50, 80, 110], [0, 0, 40, 30]], np.float32)
    cfg = geometry_only(soco_cfg("SoCo_FPN"))
    cfg.INPUT.SSL.FLIP_PROB, cfg.INPUT.SSL.CUTOUT_PROB, cfg.INPUT.SSL.CUTOUT_VIEWS = 1.0, 1.0, [1, 2]
    cfg.INPUT.SSL.VIEW_TYPES = ["whole", "whole", "whole"]
    mapper = SoCoMapper(cfg, box_source={"stripes": props})
    for seed in range(5):
        seed_all(seed)
        out = mapper(d)
        assert not (out["views"][0] == torch.tensor(MEAN).view(3, 1, 1)).all(0).any()  # view 0 has no cutout
        for pair in out["pairs"]:
            j = pair["views"][1]
            view, size = out["views"][j], cfg.INPUT.SSL.VIEW_SIZES[j]
            cut = (view == torch.tensor(MEAN).view(3, 1, 1)).all(0).numpy()
            assert cut.any()
            allowed = np.zeros_like(cut)
            for x1, y1, x2, y2 in pair["boxes"][1].numpy():
                margin = int(np.ceil(np.sqrt(0.3 * (x2 - x1 + 1) * (y2 - y1 + 1)) / 2)) + 1
                allowed[max(int(y1) - margin, 0) : int(np.ceil(y2)) + margin, max(int(x1) - margin, 0) : int(np.ceil(x2)) + margin] = True
                assert x1 >= size * 0.55  # flipped: the boxes are on the right now
            assert not (cut & ~allowed).any()


def test_soco_missing_images(tmp_path, demo_dicts, demo_boxes):
    cfg = soco_cfg("SoCo_FPN")
    boxes = {k: v for k, v in demo_boxes.items() if k != "chelsea"}
    d = next(x for x in demo_dicts if x["image_id"] == "chelsea")
    with pytest.raises(KeyError, match="chelsea"):
        SoCoMapper(cfg, box_source=boxes)(d)
    cfg.PROPOSALS.MISSING, cfg.PROPOSALS.JITTER_PROB = "whole_image", 0.0
    out = SoCoMapper(cfg, box_source=boxes)(d)
    for pair in out["pairs"]:
        np.testing.assert_allclose(pair["boxes"][0], [[0, 0, 224, 224]] * 4, atol=1e-4)
        assert pair["ids"][0].tolist() == [1] * 4
    cfg.PROPOSALS.MISSING = "sometimes"
    with pytest.raises(ValueError, match="MISSING"):
        SoCoMapper(cfg, box_source=boxes)


def test_soco_from_config_needs_a_cache():
    cfg = soco_cfg("SoCo_FPN")
    with pytest.raises(ValueError, match="PROPOSALS.BOX_CACHE"):
        build_ssl_mapper(cfg)
    cfg.PROPOSALS.BOX_CACHE = "/nonexistent/boxes.pcache"
    mapper = build_ssl_mapper(cfg)  # opened lazily: building (and pickling to workers) does not touch it
    assert isinstance(mapper, SoCoMapper)
    clone = pickle.loads(pickle.dumps(mapper))
    assert clone.boxes.source == "/nonexistent/boxes.pcache" and clone.boxes._opened is None


def test_mappers_are_deterministic_under_seeding_and_picklable(demo_dicts, demo_boxes):
    mapper = SoCoMapper(soco_cfg("SoCo*"), box_source=demo_boxes)
    clone = pickle.loads(pickle.dumps(mapper))
    d = demo_dicts[0]
    seed_all(7)
    a = mapper(d)
    seed_all(7)
    b = clone(d)
    seed_all(8)
    c = mapper(d)
    assert all(torch.equal(x, y) for x, y in zip(a["views"], b["views"]))
    for p, q in zip(a["pairs"], b["pairs"]):
        assert all(torch.equal(x, y) for x, y in zip(p["boxes"] + p["ids"], q["boxes"] + q["ids"]))
    assert not all(torch.equal(x, y) for x, y in zip(a["views"], c["views"]))


# ------------------------------------------------------------------------------ colour
def test_colour_probabilities_per_view():
    cfg = soco_cfg("SoCo_FPN")
    cfg.PROPOSALS.BOX_CACHE = "unused"
    mapper = build_ssl_mapper(cfg)
    expected = {0: (1.0, 0.0), 1: (0.1, 0.2), 2: (0.1, 0.2)}  # (blur, solarize): BYOL's asymmetric recipe
    torch.manual_seed(0)
    n = 3000
    for v, (blur, solarize) in expected.items():
        ops = [mapper.color[v].sample() for _ in range(n)]
        rate = lambda f: sum(map(f, ops)) / n  # noqa: E731
        assert abs(rate(lambda o: len(o.jitter_order) > 0) - 0.8) < 0.03
        assert abs(rate(lambda o: o.grayscale) - 0.2) < 0.03
        assert abs(rate(lambda o: o.blur_sigma > 0) - blur) < 0.03
        assert abs(rate(lambda o: o.solarize) - solarize) < 0.03
        sigmas = [o.blur_sigma for o in ops if o.blur_sigma > 0]
        assert all(0.1 <= s <= 2.0 for s in sigmas)
        jittered = [o for o in ops if o.jitter_order]
        assert all(sorted(o.jitter_order) == [0, 1, 2, 3] for o in jittered)  # every op, in a random order
        assert len({o.jitter_order for o in jittered}) > 12  # of the 24 orders
        factors = np.array([o.jitter_factors for o in jittered])
        assert factors[:, :3].min() >= 0.6 and factors[:, :2].max() <= 1.4 and factors[:, 2].max() <= 1.2
        assert np.abs(factors[:, 3]).max() <= 0.1
        assert all(o.jitter_factors == (1.0, 1.0, 1.0, 0.0) for o in ops if not o.jitter_order)
    assert mapper.color[0].blur_prob == 1.0 and mapper.color[0].solarize_prob == 0.0
    assert mapper.color[0].blur_radius == 6  # 3 sigma of the largest sigma, 2.0


def test_flip_probability():
    cfg = soco_cfg("SoCo_FPN")
    cfg.PROPOSALS.BOX_CACHE = "unused"
    mapper = build_ssl_mapper(cfg)
    np.random.seed(0)
    flips = np.array([mapper.sample_flips() for _ in range(2000)])
    assert flips.shape == (2000, 3) and np.all(np.abs(flips.mean(0) - 0.5) < 0.04)
    # independent per view
    assert abs((flips[:, 0] == flips[:, 1]).mean() - 0.5) < 0.04


# -------------------------------------------------------------------------- image level
@pytest.mark.parametrize(
    "recipe",
    [
        dict(CROP_SCALE=(0.08, 1.0), COLOR_JITTER=(0.4, 0.4, 0.2, 0.1), BLUR_PROBS=[1.0, 0.1], SOLARIZE_PROBS=[0.0, 0.2]),  # BYOL
        dict(CROP_SCALE=(0.2, 1.0), COLOR_JITTER=(0.4, 0.4, 0.4, 0.1), BLUR_PROBS=[0.5], SOLARIZE_PROBS=[0.0]),  # MoCo-v2, DenseCL
    ],
    ids=["byol", "mocov2_densecl"],
)
def test_image_level_mapper_format(recipe, demo_dicts):
    cfg = base_cfg()
    cfg.INPUT.SSL.MAPPER = "ImageLevelMapper"
    for key, value in recipe.items():
        setattr(cfg.INPUT.SSL, key, value)
    mapper = build_ssl_mapper(cfg)
    assert isinstance(mapper, ImageLevelMapper)
    assert [p.blur_prob for p in mapper.color] == (recipe["BLUR_PROBS"] * 2)[:2]
    seed_all(0)
    for d in demo_dicts[:4]:
        out = mapper(d)
        assert set(out) == {"image_id", "views"}
        check_views(out, [224, 224])
        assert not torch.equal(out["views"][0], out["views"][1])


def test_registry_and_view_validation():
    assert {"SoCoMapper", "ImageLevelMapper", "DetConMapper"} <= set(SSL_MAPPER_REGISTRY._obj_map)
    cfg = base_cfg()
    cfg.INPUT.SSL.MAPPER = "NoSuchMapper"
    with pytest.raises(KeyError):
        build_ssl_mapper(cfg)
    cfg.INPUT.SSL.MAPPER = "ImageLevelMapper"
    for sizes, types in [([224], ["crop", "crop"]), ([224, 112], ["crop", "downsample:1"]), ([224, 224], ["crop", "zoom"])]:
        cfg.INPUT.SSL.VIEW_SIZES, cfg.INPUT.SSL.VIEW_TYPES = sizes, types
        with pytest.raises(ValueError):
            build_ssl_mapper(cfg)
    cfg.INPUT.SSL.VIEW_SIZES, cfg.INPUT.SSL.VIEW_TYPES = [224, 224], ["crop", "crop"]
    cfg.INPUT.SSL.BLUR_PROBS = [1.0, 0.1, 0.1]
    with pytest.raises(ValueError, match="BLUR_PROBS"):
        build_ssl_mapper(cfg)


# ------------------------------------------------------------------ real proposal cache
def map_batch(mapper, batch):
    return [mapper(d) for d in batch]


def write_box_cache(path, boxes_by_id, sizes):
    from soco_d2.proposals import CacheWriter

    header = {"method": "test", "generator": {}, "versions": {}, "source": "tests"}
    with CacheWriter(str(path), "boxes", header) as writer:
        for image_id, boxes in boxes_by_id.items():
            h, w = sizes[image_id]
            writer.add_boxes(image_id, h, w, np.round(boxes))
        writer.commit()
    return str(path)


def test_soco_through_a_real_cache_file_and_workers(tmp_path, demo_dicts, demo_boxes):
    """BOX_CACHE names a ProposalCache file: opened lazily, once per process
    (the main process and each forked dataloader worker)."""
    sizes = {d["image_id"]: (d["height"], d["width"]) for d in demo_dicts}
    cfg = soco_cfg("SoCo_FPN")
    cfg.PROPOSALS.BOX_CACHE = write_box_cache(tmp_path / "boxes.pcache", demo_boxes, sizes)
    mapper = build_ssl_mapper(cfg)
    assert mapper.boxes._opened is None
    seed_all(0)
    out = mapper(demo_dicts[1])
    assert type(mapper.boxes._opened).__name__ == "ProposalCache"
    assert len(out["pairs"]) == 2 and out["pairs"][0]["boxes"][0].shape == (4, 4)
    # the same sample as with the in-memory boxes (the cache stores integer corners)
    rounded = {k: np.round(v).astype(np.float32) for k, v in demo_boxes.items()}
    seed_all(0)
    ref = SoCoMapper(cfg, box_source=rounded)(demo_dicts[1])
    for p, q in zip(out["pairs"], ref["pairs"]):
        assert all(torch.equal(x, y) for x, y in zip(p["boxes"] + p["ids"], q["boxes"] + q["ids"]))
    loader = torch.utils.data.DataLoader(demo_dicts[:4], batch_size=2, num_workers=2, collate_fn=functools.partial(map_batch, mapper))
    batches = [x for batch in loader for x in batch]
    assert [b["image_id"] for b in batches] == [d["image_id"] for d in demo_dicts[:4]]
    assert all(len(b["pairs"]) == 2 for b in batches)
    # a cache computed on another version of an image is refused, not silently misplaced
    sizes["chelsea"] = (sizes["chelsea"][0] // 2, sizes["chelsea"][1] // 2)
    small = {"chelsea": np.floor(demo_boxes["chelsea"] / 2)}
    cfg.PROPOSALS.BOX_CACHE = write_box_cache(tmp_path / "other.pcache", small, sizes)
    with pytest.raises(ValueError, match="150x225"):
        build_ssl_mapper(cfg)(next(d for d in demo_dicts if d["image_id"] == "chelsea"))
