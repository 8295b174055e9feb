"""Backends, conventions and robust decoding on tiny synthetic images."""
import ctypes

import numpy as np
import pytest
from PIL import Image

from soco_d2.proposals import ProposalGenerator, build_backend, get_preset
from soco_d2.proposals.filters import parse_official_strategy
from soco_d2.proposals.generate import process_image
from soco_d2.imageio import ImageSkip, read_rgb

# a flat red square covering columns 10..29 and rows 20..39 of a grey 64x64 image
SQUARE = [10, 20, 30, 40]


def square_image(h=64, w=64, box=SQUARE, noise=0):
    rng = np.random.default_rng(0)
    img = np.full((h, w, 3), 128, np.uint8)
    if noise:
        img = np.clip(img + rng.integers(-noise, noise + 1, img.shape), 0, 255).astype(np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = (220, 30, 30)
    return img


def test_reference_package_box_convention():
    # the square is one initial Felzenszwalb segment: its box must be exactly XYXY [10, 20, 30, 40]
    boxes = build_backend("selectivesearch", scale=100, sigma=0.5, min_size=20)(square_image())
    assert SQUARE in boxes.tolist()
    assert [0, 0, 64, 64] in boxes.tolist()  # the final merge: the whole image (x2 exclusive)


@pytest.mark.parametrize("mode", ["fast", "quality", "single", "custom"])
def test_opencv_modes(mode):
    params = dict(mode=mode, k=100, min_size=20, sigma=0.5)
    if mode == "custom":
        params.update(color_spaces=["rgb", "lab"], num_k=2, inc_k=50, strategies=["cfts", "fs"])
    backend = build_backend("opencv_ss", **params)
    img = square_image(noise=3)
    boxes = backend(img)
    assert boxes.dtype == np.int64 and len(boxes) > 0
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 64).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    if mode == "single":
        assert SQUARE in boxes.tolist()  # OpenCV's rects are extents: same exclusive x2
    # OpenCV ranks with libc rand(); the backend reseeds, so history does not change the output
    libc = ctypes.CDLL(None)
    for _ in range(7):
        libc.rand()
    assert np.array_equal(backend(img), boxes)


def test_opencv_bad_params():
    with pytest.raises(ValueError, match="mode"):
        build_backend("opencv_ss", mode="slow")
    with pytest.raises(ValueError, match="colour space"):
        build_backend("opencv_ss", mode="custom", color_spaces=["xyz"])
    with pytest.raises(ValueError, match="strategy"):
        build_backend("opencv_ss", mode="custom", strategies=["cq"])
    with pytest.raises(KeyError, match="unknown proposal backend"):
        build_backend("edge_boxes")


@pytest.mark.parametrize("name", ["skimage_fh", "opencv_fh"])
def test_felzenszwalb_label_maps(name):
    labels = build_backend(name, scale=100, sigma=0.5, min_size=50)(square_image())
    assert labels.shape == (64, 64)
    assert set(np.unique(labels).tolist()) == set(range(int(labels.max()) + 1))  # ids 0..n-1
    core = labels[21:39, 11:29]  # the square minus its blurred 1-pixel rim is one segment ...
    seg = labels == core[0, 0]
    assert (core == core[0, 0]).all()
    assert not seg[:20].any() and not seg[40:].any() and not seg[:, :10].any() and not seg[:, 30:].any()  # ... inside it
    assert labels[0, 0] != core[0, 0]


def test_boxes_map_back_to_original_pixels_after_resize():
    box = [40, 60, 120, 140]  # an 80x80 square in a 256x192 image, segmented at 64x48 (factor 1/4)
    img = square_image(192, 256, box)
    spec = get_preset("selective_search", "single", max_side=64, scale_params=True,
                      filter=parse_official_strategy("raw"), params=dict(k=100, min_size=20, sigma=0.5))
    gen = ProposalGenerator(spec)
    raw, _stage, _n = gen.boxes(img)
    assert (raw[:, 2] <= 256).all() and (raw[:, 3] <= 192).all()
    err = np.abs(raw - np.array(box)).max(axis=1)
    assert err.min() <= 2, raw  # within half a resized pixel (4 px) of the true square
    full = get_preset("selective_search", "single", max_side=0, filter=parse_official_strategy("raw"),
                      params=dict(k=100, min_size=20, sigma=0.5))
    assert box in ProposalGenerator(full).boxes(img)[0].tolist()


def test_masks_at_reduced_resolution():
    img = square_image(192, 256, [40, 60, 120, 140])
    spec = get_preset("felzenszwalb", "paper", max_side=64, params=dict(scale=100, min_size=10, sigma=0.5))
    labels = ProposalGenerator(spec).labels(img)
    assert labels.shape == (48, 64)
    core = labels[16:34, 11:29]  # the square, 4x smaller, minus its rim
    assert (core == core[0, 0]).all() and labels[0, 0] != core[0, 0]
    spec = get_preset("felzenszwalb", "paper", mask_max_side=32, params=dict(scale=100, min_size=10, sigma=0.5))
    assert ProposalGenerator(spec).labels(img).shape == (24, 32)


def _save(tmp_path, name, im, **kw):
    p = str(tmp_path / name)
    im.save(p, **kw)
    return p


def test_decoding_of_unusual_files(tmp_path):
    rgb = square_image()
    gray = read_rgb(_save(tmp_path, "g.png", Image.fromarray(rgb[:, :, 0])))
    assert gray.shape == (64, 64, 3) and (gray[..., 0] == gray[..., 2]).all()
    cmyk = read_rgb(_save(tmp_path, "c.jpg", Image.fromarray(rgb).convert("CMYK")), return_mode=True)
    assert cmyk[0].shape == (64, 64, 3) and cmyk[1] == "CMYK"
    assert read_rgb(_save(tmp_path, "a.png", Image.fromarray(rgb).convert("RGBA"))).shape == (64, 64, 3)
    assert read_rgb(_save(tmp_path, "p.png", Image.fromarray(rgb).convert("P"))).shape == (64, 64, 3)
    deep = np.full((8, 8), 65535, np.uint16)
    deep[0, 0] = 0
    d = read_rgb(_save(tmp_path, "d.png", Image.fromarray(deep)))
    assert d[1, 1].tolist() == [255, 255, 255] and d[0, 0].tolist() == [0, 0, 0]
    # EXIF orientation 6: stored 64 wide x 32 high, shown (and read by detectron2) rotated, 32 wide x 64 high
    im = Image.fromarray(rgb[:32])
    exif = im.getexif()
    exif[0x0112] = 6
    assert read_rgb(_save(tmp_path, "r.jpg", im, exif=exif)).shape == (64, 32, 3)


def test_bad_files_raise_image_skip(tmp_path):
    good = _save(tmp_path, "ok.jpg", Image.fromarray(square_image(256, 256, noise=40)), quality=95)
    data = open(good, "rb").read()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "junk.jpg").write_bytes(b"\x00\x01 this is not an image" * 10)
    (tmp_path / "empty.png").write_bytes(b"")
    cases = {"trunc.jpg": "truncated", "junk.jpg": "corrupt", "empty.png": "corrupt", "missing.png": "missing"}
    for name, category in cases.items():
        with pytest.raises(ImageSkip) as e:
            read_rgb(str(tmp_path / name))
        assert e.value.category == category, (name, e.value)
        assert str(tmp_path) not in e.value.reason  # reasons are path-free (same on every machine)
    with pytest.raises(ImageSkip, match="huge"):
        read_rgb(good, max_pixels=1000)
    assert read_rgb(str(tmp_path / "trunc.jpg"), allow_truncated=True).shape == (256, 256, 3)


def test_process_image_never_raises(tmp_path):
    spec = get_preset("selective_search", "single")
    gen = ProposalGenerator(spec)
    (tmp_path / "junk.png").write_bytes(b"garbage")
    r = process_image(gen, "junk", str(tmp_path / "junk.png"))
    assert not r["ok"] and r["category"] == "corrupt"
    tiny = _save(tmp_path, "tiny.png", Image.fromarray(square_image()[:3, :5]))
    r = process_image(gen, "tiny", tiny)
    assert r["ok"] and r["tiny"] and r["info"]["stage"] == spec.filter.stages.index("whole_image")
