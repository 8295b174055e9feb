"""The batched photometric ops: each against the PIL path the mappers used before
(same parameters, stated tolerances), against torchvision's tensor ops, per-sample
parameters in one batch, and the same views whichever side applies them."""
import logging

import numpy as np
import pytest
import soco_d2  # noqa: F401  (compat shims before detectron2)
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms import functional as TF1
from torchvision.transforms.v2 import functional as TF2

from soco_d2 import get_pretrain_cfg
from soco_d2.data import get_pretrain_dicts
from soco_d2.data.augment import ColorPipeline
from soco_d2.data.mappers import DetConMapper, ImageLevelMapper, SoCoMapper, photometric_placement
from soco_d2.data.photometric import (
    PhotometricBatch,
    ViewPhotometry,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_photometry,
    gaussian_blur,
    grayscale,
    solarize,
)
from soco_d2.modeling.meta_arch.base import SSLMetaArch
from mapper_utils import seed_all

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


@pytest.fixture(scope="module")
def photos():
    """The demo photos at 96 x 96, PIL and (1, 3, 96, 96) float tensors of the same uint8 pixels."""
    images = [Image.open(d["file_name"]).convert("RGB").resize((96, 96), Image.BILINEAR)
              for d in get_pretrain_dicts("demo_images")]
    return [(im, torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float()) for im in images]


def pil_blur(im, sigma):
    return im.filter(ImageFilter.GaussianBlur(radius=sigma))


# (name, PIL path of today's mappers, batched op, parameter, max |diff|, mean |diff|) in 0..255 levels.
# PIL rounds every op to uint8 (and its contrast uses an integer mean, its hue an 8-bit HSV and
# 1/255-turn steps); its blur is three box blurs approximating the Gaussian (the 99.9th
# percentile is bounded instead of the max: high-contrast corners differ most).
PIL_CASES = [
    ("brightness", TF1.adjust_brightness, adjust_brightness, 0.6, 1.0, 0.5),
    ("brightness", TF1.adjust_brightness, adjust_brightness, 1.4, 1.0, 0.5),
    ("contrast", TF1.adjust_contrast, adjust_contrast, 0.6, 1.5, 0.7),
    ("contrast", TF1.adjust_contrast, adjust_contrast, 1.4, 1.5, 0.7),
    ("saturation", TF1.adjust_saturation, adjust_saturation, 0.6, 1.5, 0.6),
    ("saturation", TF1.adjust_saturation, adjust_saturation, 1.4, 1.5, 0.6),
    ("hue", TF1.adjust_hue, adjust_hue, -0.1, 16.0, 1.5),
    ("hue", TF1.adjust_hue, adjust_hue, 0.05, 16.0, 1.5),
    ("blur", pil_blur, None, 0.5, None, 0.8),
    ("blur", pil_blur, None, 2.0, None, 0.8),
]


@pytest.mark.parametrize("name,pil_op,op,value,max_diff,mean_diff", PIL_CASES,
                         ids=[f"{c[0]}_{c[3]}" for c in PIL_CASES])
def test_each_op_matches_the_pil_path(photos, name, pil_op, op, value, max_diff, mean_diff):
    diffs = []
    for im, x in photos:
        reference = torch.from_numpy(np.array(pil_op(im, value))).permute(2, 0, 1).float()
        ours = gaussian_blur(x, torch.tensor([value]), 6) if name == "blur" else op(x, torch.tensor([value]))
        diffs.append((ours[0] - reference).abs().flatten())
    diff = torch.cat(diffs)
    assert diff.mean() <= mean_diff
    if max_diff is not None:
        assert diff.max() <= max_diff
    else:
        assert torch.quantile(diff, 0.999) <= 10.0


def test_grayscale_and_solarize_match_the_pil_path(photos):
    for im, x in photos:
        gray = torch.from_numpy(np.array(TF1.rgb_to_grayscale(im, num_output_channels=3))).permute(2, 0, 1).float()
        assert (grayscale(x)[0] - gray).abs().max() <= 1.0  # PIL rounds L, torchvision's weights are 0.2989/0.587/0.114
        sol = torch.from_numpy(np.array(ImageOps.solarize(im, 128))).permute(2, 0, 1).float()
        assert torch.equal(solarize(x)[0], sol)  # exact on whole levels


def test_ops_are_torchvisions_tensor_ops(photos):
    """Scalar factors on float images: the batched ops are torchvision.transforms.v2's."""
    _, x = photos[1]
    unit = x / 255.0
    for ours, theirs, value in [
        (adjust_brightness, TF2.adjust_brightness, 1.3),
        (adjust_contrast, TF2.adjust_contrast, 0.7),
        (adjust_saturation, TF2.adjust_saturation, 1.2),
        (adjust_hue, TF2.adjust_hue, -0.08),
        (adjust_hue, TF2.adjust_hue, 0.1),
    ]:
        torch.testing.assert_close(ours(x, torch.tensor([value])), theirs(unit, value) * 255.0, atol=2e-3, rtol=0)
    torch.testing.assert_close(grayscale(x), TF2.rgb_to_grayscale(unit, num_output_channels=3) * 255.0, atol=2e-3, rtol=0)
    torch.testing.assert_close(solarize(x), TF2.solarize(unit, 128 / 255.0) * 255.0, atol=2e-3, rtol=0)
    # torchvision pads by reflection; away from the border the kernels are the same Gaussian
    blurred = TF2.gaussian_blur(unit, kernel_size=13, sigma=1.5) * 255.0
    torch.testing.assert_close(gaussian_blur(x, torch.tensor([1.5]), 6)[..., 6:-6, 6:-6], blurred[..., 6:-6, 6:-6],
                               atol=2e-3, rtol=0)


def random_params(rng, size, cutout=2):
    squares = []
    for _ in range(cutout):
        if rng.random() < 0.5:
            x0, y0 = rng.integers(0, size - 4, 2)
            squares.append((x0, y0, x0 + rng.integers(1, 20), y0 + rng.integers(1, 20)))
        else:
            squares.append((0, 0, 0, 0))
    jitter = rng.random() < 0.8
    return ViewPhotometry(
        jitter_order=tuple(int(i) for i in rng.permutation(4)) if jitter else (),
        jitter_factors=(rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(-0.1, 0.1))
        if jitter else (1.0, 1.0, 1.0, 0.0),
        grayscale=bool(rng.random() < 0.3),
        blur_sigma=float(rng.uniform(0.1, 2.0)) if rng.random() < 0.5 else 0.0,
        blur_radius=6,
        solarize=bool(rng.random() < 0.3),
        cutout=np.minimum(np.array(squares, dtype=np.int32), size),
    )


def test_per_sample_parameters_in_one_batch_equal_one_sample_at_a_time(photos):
    rng = np.random.default_rng(0)
    views = torch.cat([x for _, x in photos]).to(torch.uint8)
    params = [random_params(rng, 96) for _ in views]
    assert len({p.jitter_order for p in params}) > 3  # several orders in the batch
    batched = apply_photometry(views, PhotometricBatch.from_views(params), MEAN, STD)
    for i, p in enumerate(params):
        alone = apply_photometry(views[i : i + 1], PhotometricBatch.from_views([p]), MEAN, STD)
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-4, rtol=0)
    # not normalised: cutout is the mean colour, the rest is in 0..255
    coloured = apply_photometry(views, PhotometricBatch.from_views(params), MEAN, STD, normalize=False)
    torch.testing.assert_close((coloured - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1),
                               batched, atol=1e-4, rtol=0)
    assert coloured.min() >= 0 and coloured.max() <= 255
    # no parameters: normalisation only; the input is left alone
    plain = views.float()
    out = apply_photometry(plain, None, MEAN, STD)
    assert torch.equal(plain, views.float())
    torch.testing.assert_close(out, (plain - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))


def pil_pipeline(im: Image.Image, p: ViewPhotometry) -> Image.Image:
    """The mappers' colour path before the batched ops: PIL images, uint8 after every op."""
    ops = (TF1.adjust_brightness, TF1.adjust_contrast, TF1.adjust_saturation, TF1.adjust_hue)
    for op in p.jitter_order:
        im = ops[op](im, p.jitter_factors[op])
    if p.grayscale:
        im = TF1.rgb_to_grayscale(im, num_output_channels=3)
    if p.blur_sigma > 0:
        im = pil_blur(im, p.blur_sigma)
    if p.solarize:
        im = ImageOps.solarize(im, 128)
    return im


def test_whole_recipe_matches_the_pil_path_on_the_same_draws(photos):
    """BYOL's recipe (the strongest: blur always on view 1, solarize on view 2) drawn by
    ColorPipeline, applied by PIL as before and by the batched ops."""
    pipes = [ColorPipeline((0.4, 0.4, 0.2, 0.1), 0.8, 0.2, 1.0, (0.1, 2.0), 0.0),
             ColorPipeline((0.4, 0.4, 0.2, 0.1), 0.8, 0.2, 0.1, (0.1, 2.0), 0.2)]
    torch.manual_seed(0)
    diffs = []
    for _ in range(2):
        for pipe in pipes:
            params = [pipe.sample() for _ in photos]
            views = torch.cat([x for _, x in photos]).to(torch.uint8)
            ours = apply_photometry(views, PhotometricBatch.from_views(params), MEAN, STD, normalize=False)
            for (im, _), p, view in zip(photos, params, ours):
                reference = torch.from_numpy(np.array(pil_pipeline(im, p))).permute(2, 0, 1).float()
                diffs.append((view - reference).abs().flatten())
    diff = torch.cat(diffs)
    # a few levels on average; single pixels can differ more where solarize's threshold
    # (128) falls between the two paths' values: 255 - 2 x 128 ~ 0, so still small
    assert diff.mean() <= 1.5 and torch.quantile(diff, 0.99) <= 8.0


# ------------------------------------------------------------------ both placements


def mapper_cfg(kind, placement):
    cfg = get_pretrain_cfg()
    cfg.INPUT.FORMAT, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = "RGB", list(MEAN), list(STD)
    s = cfg.INPUT.SSL
    s.PHOTOMETRIC_ON, s.VIEW_SIZES = placement, [96, 96]
    if kind == "soco":
        s.MAPPER, s.VIEW_SIZES, s.VIEW_TYPES, s.CUTOUT_VIEWS = "SoCoMapper", [96, 96, 64], ["whole", "crop", "crop"], [1, 2]
    elif kind == "detcon":
        s.MAPPER, s.INTERPOLATION, s.CROP_ATTEMPTS, s.CROP_FALLBACK = "DetConMapper", "bicubic", 1, "clip"
        cfg.MODEL.DETCON.MASK_SOURCE = "grid"
    return cfg


def build_mapper(kind, placement, demo_boxes=None):
    cfg = mapper_cfg(kind, placement)
    if kind == "soco":
        return SoCoMapper(cfg, box_source=demo_boxes)
    return DetConMapper(cfg) if kind == "detcon" else ImageLevelMapper(cfg)


@pytest.mark.parametrize("kind", ["image_level", "soco", "detcon"])
def test_both_placements_give_the_same_training_batch(kind):
    """The same samples through PHOTOMETRIC_ON mapper and model: the same normalised views
    where the model sees them (``view_images``), and the same boxes / masks."""
    dicts = get_pretrain_dicts("demo_images")[:4]
    rng = np.random.default_rng(0)
    demo_boxes = {d["image_id"]: np.array([[10, 10, 60, 50], [5, 30, 90, 90], [40, 5, 80, 70]], np.float32)
                  * rng.uniform(1, 3) for d in dicts}
    batches = {}
    for placement in ("mapper", "model"):
        mapper = build_mapper(kind, placement, demo_boxes)
        samples = []
        for i, d in enumerate(dicts):
            seed_all(i)
            samples.append(mapper(d))
        batches[placement] = mapper.collate(samples)
    on_mapper, on_model = batches["mapper"], batches["model"]
    assert on_mapper["photometric"] is None and all(v.dtype == torch.float32 for v in on_mapper["views"])
    assert all(v.dtype == torch.uint8 for v in on_model["views"]) and len(on_model["photometric"]) == len(on_model["views"])
    model = SSLMetaArch(pixel_mean=MEAN, pixel_std=STD)
    for v in range(len(on_model["views"])):
        torch.testing.assert_close(model.view_images(on_model, v), model.view_images(on_mapper, v), atol=1e-4, rtol=0)
    if kind == "soco":
        assert on_model["photometric"][1].cutout is not None  # cutout drawn, applied on the model side
        for a, b in zip(on_mapper["pairs"], on_model["pairs"]):
            assert all(torch.equal(x, y) for x, y in zip(a["boxes"] + a["ids"], b["boxes"] + b["ids"]))
    if kind == "detcon":
        for a, b in zip(on_mapper["masks"], on_model["masks"]):
            assert torch.equal(a["ids"], b["ids"]) and all(torch.equal(x, y) for x, y in zip(a["owners"], b["owners"]))


def test_placement_is_resolved_from_the_device_and_logged(caplog):
    cfg = get_pretrain_cfg()
    with caplog.at_level(logging.INFO, logger="soco_d2.data.mappers.base"):
        cfg.MODEL.DEVICE = "cpu"
        assert photometric_placement(cfg) == "mapper"
        cfg.MODEL.DEVICE = "cuda:1"
        assert photometric_placement(cfg) == "model"
    assert "auto -> mapper" in caplog.text and "auto -> model" in caplog.text
    cfg.INPUT.SSL.PHOTOMETRIC_ON = "mapper"
    assert photometric_placement(cfg) == "mapper"
    cfg.INPUT.SSL.PHOTOMETRIC_ON = "gpu"
    with pytest.raises(ValueError, match="PHOTOMETRIC_ON"):
        photometric_placement(cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_result(photos):
    rng = np.random.default_rng(1)
    views = torch.cat([x for _, x in photos]).to(torch.uint8)
    params = PhotometricBatch.from_views([random_params(rng, 96) for _ in views])
    cpu = apply_photometry(views, params, MEAN, STD)
    cuda = apply_photometry(views.cuda(), params.to("cuda"), torch.tensor(MEAN).cuda(), torch.tensor(STD).cuda())
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-3, rtol=0)


# ------------------------------------------------------------------ decoding on the device


@pytest.fixture(scope="module")
def jpeg_dicts(tmp_path_factory):
    """Three demo photos as JPEGs (one with an EXIF rotation) and one PNG."""
    out = tmp_path_factory.mktemp("jpegs")
    dicts = []
    for i, d in enumerate(get_pretrain_dicts("demo_images")[:4]):
        image = Image.open(d["file_name"]).convert("RGB")
        path = out / f"{i}.{'png' if i == 3 else 'jpg'}"
        if i == 1:  # stored sideways, displayed upright
            exif = Image.Exif()
            exif[0x0112] = 6
            image.transpose(Image.Transpose.ROTATE_90).save(path, quality=90, exif=exif)
        else:
            image.save(path, quality=90)
        dicts.append({"file_name": str(path), "image_id": str(i), "height": image.height, "width": image.width})
    return dicts


def map_and_collate(mapper, dicts):
    samples = []
    for i, d in enumerate(dicts):
        seed_all(i)
        samples.append(mapper(d))
    return mapper.collate(samples)


@pytest.mark.parametrize("kind", ["image_level", "soco"])
def test_decoding_on_the_device_gives_the_workers_views(kind, jpeg_dicts):
    """DECODE_ON device: the worker sends the file's bytes and the views' geometry; the
    model decodes (torchvision.io.decode_jpeg, here on the CPU) and cuts the same views."""
    boxes = {d["image_id"]: np.array([[10, 10, 60, 50], [5, 30, 90, 90]], np.float32) for d in jpeg_dicts}
    cfg = mapper_cfg(kind, "model")
    in_workers = build_mapper(kind, "model", boxes)
    cfg.INPUT.SSL.DECODE_ON = "device"
    on_device = SoCoMapper(cfg, box_source=boxes) if kind == "soco" else ImageLevelMapper(cfg)
    reference, batch = map_and_collate(in_workers, jpeg_dicts), map_and_collate(on_device, jpeg_dicts)
    assert "views" not in batch and [e.is_jpeg for e in batch["encoded"]] == [True, True, True, False]
    assert batch["encoded"][1].data.dim() == 1  # undecoded bytes travel
    model = SSLMetaArch(pixel_mean=MEAN, pixel_std=STD)
    prepared = model.prepare(batch)
    for ours, theirs in zip(prepared["views"], reference["views"]):
        assert ours.dtype == torch.uint8 and ours.shape == theirs.shape
        assert (ours.int() - theirs.int()).abs().max() <= 2  # PIL's and torchvision's libjpeg
    if kind == "soco":
        for a, b in zip(batch["pairs"], reference["pairs"]):
            assert all(torch.equal(x, y) for x, y in zip(a["boxes"] + a["ids"], b["boxes"] + b["ids"]))
    cfg.INPUT.SSL.PHOTOMETRIC_ON = "mapper"
    with pytest.raises(ValueError, match="PHOTOMETRIC_ON model"):
        ImageLevelMapper(cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG)")
def test_nvjpeg_decoding_on_cuda(jpeg_dicts):
    cfg = mapper_cfg("image_level", "model")
    reference = map_and_collate(ImageLevelMapper(cfg), jpeg_dicts)
    cfg.INPUT.SSL.DECODE_ON = "device"
    batch = map_and_collate(ImageLevelMapper(cfg), jpeg_dicts)
    model = SSLMetaArch(pixel_mean=MEAN, pixel_std=STD).cuda()
    for ours, theirs in zip(model.prepare(batch)["views"], reference["views"]):
        assert ours.is_cuda and ours.shape == theirs.shape
        assert (ours.cpu().float() - theirs.float()).abs().mean() < 1.0  # nvJPEG's IDCT rounds differently


def test_jpeg_draft_decodes_smaller_when_every_view_allows_it(tmp_path):
    from soco_d2.data.decode import EncodedImage, draft_reduction

    photo = Image.open(get_pretrain_dicts("demo_images")[0]["file_name"]).convert("RGB").resize((1000, 800))
    photo.save(tmp_path / "big.jpg", quality=90)
    d = {"file_name": str(tmp_path / "big.jpg"), "image_id": "big", "height": 800, "width": 1000}
    assert EncodedImage.read(d["file_name"]).decode(4).shape == (200, 250, 3)
    assert (draft_reduction([800, 300], [96, 96]), draft_reduction([800, 150], [96, 96]), draft_reduction([90], [96])) \
        == (2, 1, 1)
    cfg = mapper_cfg("image_level", "model")
    cfg.INPUT.SSL.VIEW_TYPES, cfg.INPUT.SSL.FLIP_PROB = ["whole", "crop"], 0.0
    cfg.INPUT.SSL.CROP_SCALE = (0.9, 1.0)  # 800 px crops of a 1000 x 800 image: 1/8 still leaves 100 px >= 96
    full = map_and_collate(ImageLevelMapper(cfg), [d])
    cfg.INPUT.SSL.JPEG_DRAFT = True
    mapper = ImageLevelMapper(cfg)
    draft = map_and_collate(mapper, [d])
    for a, b in zip(draft["views"], full["views"]):
        diff = (a.float() - b.float()).abs()
        assert 0 < diff.mean() < 6.0  # the DCT-domain downscale and a re-rounded window: close, not equal
