"""DetCon mapper: masks from Felzenszwalb maps (full and reduced resolution), a
spatial grid and ground-truth instances follow their views pixel for pixel,
ids are compact and consistent across the views."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.segmentation import felzenszwalb

from soco_d2 import get_pretrain_cfg
from soco_d2.data import build_ssl_mapper, get_pretrain_dicts
from soco_d2.data.mappers import DetConMapper, compact_ids, grid_label_map, instances_label_map
from mapper_utils import demo_dicts, geometry_only, seed_all  # noqa: F401  (demo_dicts: a fixture)


def detcon_cfg(source="fh"):
    """DetCon's views (docs/methods/detcon.md, Views and how the masks follow them)."""
    cfg = get_pretrain_cfg()
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.SSL.PHOTOMETRIC_ON = "mapper"  # float views, coloured here (tests/test_photometric.py: "model")
    s = cfg.INPUT.SSL
    s.MAPPER, s.VIEW_SIZES, s.VIEW_TYPES = "DetConMapper", [224, 224], ["crop", "crop"]
    s.CROP_SCALE, s.CROP_ATTEMPTS, s.CROP_FALLBACK, s.INTERPOLATION = (0.08, 1.0), 1, "clip", "bicubic"
    s.COLOR_JITTER, s.BLUR_PROBS, s.SOLARIZE_PROBS = (0.4, 0.4, 0.2, 0.1), [1.0, 0.1], [0.0, 0.2]
    cfg.MODEL.DETCON.MASK_SOURCE = source
    return cfg








@pytest.fixture(scope="module")
def fh_maps(demo_dicts):
    """Felzenszwalb label maps as the mask cache would hold them (DetCon's scale 1000,
    min_size 1000): full resolution for chelsea, reduced (max side 128) for the rest."""
    maps = {}
    for d in demo_dicts:
        image = Image.open(d["file_name"]).convert("RGB")
        if d["image_id"] != "chelsea":
            factor = 128 / max(image.size)
            image = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))), Image.BILINEAR)
        min_size = 1000 if d["image_id"] == "chelsea" else 60
        maps[d["image_id"]] = felzenszwalb(np.asarray(image), scale=1000, min_size=min_size).astype(np.uint16)
    return maps


def check_output(out, sizes=(224, 224)):
    assert set(out) == {"image_id", "views", "masks", "mask_layout"} and isinstance(out["image_id"], str)
    assert len(out["views"]) == len(out["masks"]) == len(sizes)
    for view, mask, size in zip(out["views"], out["masks"], sizes):
        assert view.dtype == torch.float32 and view.shape == (3, size, size)
        assert 0 <= view.min() and view.max() <= 255
        assert mask.dtype == torch.int32 and mask.shape == (size, size)
    present = torch.unique(torch.cat([m.flatten() for m in out["masks"]]))
    assert torch.equal(present, torch.arange(len(present)))  # compact: 0..n-1
    # what the model pools (C5, stride 32): majority owners of each 32 px cell, 16 sampled ids that own a cell
    for layout, mask, size in zip(out["mask_layout"], out["masks"], sizes):
        (owners,) = layout.owners
        grid = -(-size // 32)
        assert owners.dtype == torch.int16 and owners.shape == (grid, grid)
        counts = torch.bincount(mask[:32, :32].flatten().long())
        assert owners[0, 0] == counts.argmax()
        assert layout.ids.shape == layout.levels.shape == (16,) and (layout.levels == 0).all()
        assert all((owners == i).any() for i in layout.ids.tolist())
        assert layout.num_present == len(torch.unique(owners))


def test_detcon_fh_on_demo_photos(demo_dicts, fh_maps):
    mapper = DetConMapper(detcon_cfg("fh"), mask_cache=fh_maps)
    assert mapper.crop_attempts == 1 and mapper.crop_fallback == "clip"
    seed_all(0)
    for d in demo_dicts:
        out = mapper(d)
        assert out["image_id"] == d["image_id"]
        check_output(out)
        n = len(np.unique(fh_maps[d["image_id"]]))
        assert all(len(torch.unique(m)) <= n for m in out["masks"])


def segment_image(tmp_path, label: np.ndarray, name: str):
    """Paint segment k with a distinct colour; return the dict and the colour table."""
    # an odd multiplier is a bijection modulo 2**24: distinct, scattered colours
    colours = (np.arange(int(label.max()) + 1, dtype=np.int64) * 2654435761 + 12345) % (1 << 24)
    code = colours[label]
    image = np.stack([(code >> (8 * c)) & 255 for c in range(3)], 2).astype(np.uint8)
    path = tmp_path / f"{name}.png"
    Image.fromarray(image).save(path)
    return {"file_name": str(path), "image_id": name, "height": label.shape[0], "width": label.shape[1]}, colours


def voronoi_label(height, width, n, seed):
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(0, height, n), rng.uniform(0, width, n)
    yy, xx = np.mgrid[:height, :width]
    return np.argmin((yy[..., None] - cy) ** 2 + (xx[..., None] - cx) ** 2, axis=-1).astype(np.uint16) * 3 + 5


def assert_masks_follow_pixels(out, colours):
    """Each view pixel's colour names the original segment; the mask id of every
    pixel must be a function of it, one-to-one, and the same in both views."""
    order = np.argsort(colours)
    pairs = set()
    for view, mask in zip(out["views"], out["masks"]):
        arr = view.round().to(torch.int64).numpy()
        code = arr[0] | (arr[1] << 8) | (arr[2] << 16)
        pos = np.searchsorted(colours[order], code)
        assert np.array_equal(colours[order][pos], code)  # nearest resampling: only painted colours
        original = order[pos]
        pairs |= set(zip(original.ravel().tolist(), mask.numpy().ravel().tolist()))
    originals = [a for a, _ in pairs]
    compact = [b for _, b in pairs]
    assert len(set(originals)) == len(pairs) == len(set(compact))


@pytest.mark.parametrize("reduced", [False, True], ids=["full_res_map", "half_res_map"])
def test_fh_masks_follow_views(tmp_path, reduced):
    height, width = 90, 140
    label = voronoi_label(height, width, 12, seed=0)
    if reduced:  # the cache holds a half-resolution map; the image shows it nearest-upsampled
        small = np.asarray(Image.fromarray(label.astype(np.int32), mode="I").resize((70, 45), Image.NEAREST)).astype(np.uint16)
        label = np.asarray(Image.fromarray(small.astype(np.int32), mode="I").resize((width, height), Image.NEAREST))
        cache_map = small
    else:
        cache_map = label
    d, colours = segment_image(tmp_path, label, "voronoi")
    mapper = DetConMapper(geometry_only(detcon_cfg("fh")), mask_cache={"voronoi": cache_map})
    for seed in range(8):
        seed_all(seed)
        out = mapper(d)
        check_output(out)
        assert_masks_follow_pixels(out, colours)


def test_grid_masks_follow_views(tmp_path):
    cfg = geometry_only(detcon_cfg("grid"))
    cfg.MODEL.DETCON.GRID_SIZE = 5
    grid = grid_label_map(100, 160, 5)
    assert grid.shape == (100, 160) and sorted(np.unique(grid)) == list(range(25))
    assert grid[0, 0] == 0 and grid[99, 159] == 24 and grid[19, 31] == 0 and grid[20, 32] == 6
    d, colours = segment_image(tmp_path, grid, "grid")
    mapper = build_ssl_mapper(cfg)
    for seed in range(6):
        seed_all(seed)
        out = mapper(d)
        check_output(out)
        assert_masks_follow_pixels(out, colours)
    # a whole-image view, no flip: the mask is the grid of the view
    cfg.INPUT.SSL.VIEW_TYPES, cfg.INPUT.SSL.FLIP_PROB = ["whole", "whole"], 0.0
    out = build_ssl_mapper(cfg)(d)
    np.testing.assert_array_equal(out["masks"][0].numpy(), grid_label_map(224, 224, 5))


def test_gt_masks_on_demo_instances():
    dicts = get_pretrain_dicts("demo_instances_train")
    mapper = build_ssl_mapper(geometry_only(detcon_cfg("gt")))
    seed_all(0)
    for d in dicts[:6]:
        h, w = d["height"], d["width"]
        label = instances_label_map(d["annotations"], h, w)
        assert label.max() == len(d["annotations"])
        image = np.asarray(Image.open(d["file_name"]).convert("RGB"))
        for k in range(1, label.max() + 1):  # the demo's shapes are flat-painted exactly on their masks
            assert len(np.unique(image[label == k], axis=0)) == 1
        out = mapper(d)
        check_output(out)
        # background (id 0 of the image) stays id 0; every instance id is one flat colour, the same in both views
        colour_of = {}
        for view, mask in zip(out["views"], out["masks"]):
            pixels = view.permute(1, 2, 0).reshape(-1, 3).numpy()
            flat = mask.numpy().ravel()
            for m in np.unique(flat):
                if m == 0:
                    continue
                colours = np.unique(pixels[flat == m], axis=0)
                assert len(colours) == 1
                assert colour_of.setdefault(int(m), tuple(colours[0])) == tuple(colours[0])


def test_instances_label_map_rle_crowd_and_overlap():
    from pycocotools import mask as mask_util

    big = np.zeros((20, 30), np.uint8)
    big[2:18, 2:28] = 1
    small = np.zeros((20, 30), np.uint8)
    small[5:9, 5:9] = 1
    annos = [
        {"segmentation": [[5, 5, 9, 5, 9, 9, 5, 9]], "iscrowd": 0},  # small polygon, listed first
        {"segmentation": mask_util.encode(np.asfortranarray(big)), "iscrowd": 0},  # big RLE
        {"segmentation": mask_util.encode(np.asfortranarray(small)), "iscrowd": 1},  # crowd: background
    ]
    label = instances_label_map(annos, 20, 30)
    assert label[0, 0] == 0 and label[15, 20] == 2 and label[7, 7] == 1  # the smaller object stays on top
    assert set(np.unique(label)) == {0, 1, 2}


def test_compact_ids_consistent():
    a, b = np.array([[7, 7], [3, 9]]), np.array([[9, 40], [3, 3]])
    ca, cb = compact_ids([a, b])
    np.testing.assert_array_equal(ca, [[1, 1], [0, 2]])
    np.testing.assert_array_equal(cb, [[2, 3], [0, 0]])
    assert ca.dtype == np.int32


def test_detcon_missing_and_bad_sources(demo_dicts, fh_maps):
    d = next(x for x in demo_dicts if x["image_id"] == "rocket")
    partial = {k: v for k, v in fh_maps.items() if k != "rocket"}
    with pytest.raises(KeyError, match="rocket"):
        DetConMapper(detcon_cfg("fh"), mask_cache=partial)(d)
    cfg = detcon_cfg("fh")
    cfg.PROPOSALS.MISSING = "whole_image"
    out = DetConMapper(cfg, mask_cache=partial)(d)
    assert all(torch.equal(m, torch.zeros_like(m)) for m in out["masks"])  # one segment
    with pytest.raises(ValueError, match="PROPOSALS.MASK_CACHE"):
        build_ssl_mapper(detcon_cfg("fh"))
    with pytest.raises(KeyError, match="annotations"):
        build_ssl_mapper(detcon_cfg("gt"))(d)
    cfg = detcon_cfg("mcg")
    with pytest.raises(ValueError, match="MASK_SOURCE"):
        build_ssl_mapper(cfg)


def test_detcon_through_a_real_mask_cache(tmp_path, demo_dicts, fh_maps):
    """MASK_CACHE names a ProposalCache file of reduced-resolution label maps."""
    from soco_d2.proposals import CacheWriter

    path = str(tmp_path / "fh.pcache")
    header = {"method": "test", "generator": {}, "versions": {}, "source": "tests"}
    with CacheWriter(path, "masks", header) as writer:
        for d in demo_dicts[:3]:
            writer.add_mask(d["image_id"], d["height"], d["width"], fh_maps[d["image_id"]])
        writer.commit()
    cfg = detcon_cfg("fh")
    cfg.PROPOSALS.MASK_CACHE = path
    mapper = build_ssl_mapper(cfg)
    for d in demo_dicts[:3]:
        seed_all(1)
        out = mapper(d)
        check_output(out)
        seed_all(1)
        ref = DetConMapper(detcon_cfg("fh"), mask_cache=fh_maps)(d)
        assert all(torch.equal(a, b) for a, b in zip(out["masks"], ref["masks"]))
    with pytest.raises(KeyError, match=demo_dicts[4]["image_id"]):
        mapper(demo_dicts[4])
