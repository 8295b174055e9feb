"""Boxes and label maps follow their view: carried boxes against brute-force geometry
(paint the box, push the painting through the view, measure the painted region),
plus SoCo's box bookkeeping (selection, retries, jitter, clipping, padding) and cutout."""
import math

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from soco_d2.data import boxes as B
from soco_d2.data.augment import ColorPipeline, RandomResizedCrop, sample_crop_rect, sample_cutout_squares
from soco_d2.data.mappers import MultiViewMapper, ViewSpec, boxes_to_view
from soco_d2.data.photometric import PhotometricBatch, ViewPhotometry, apply_photometry

HYPOTHESIS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def geometry_mapper(specs, interp="nearest"):
    no_colour = [ColorPipeline(jitter_prob=0, grayscale_prob=0) for _ in specs]
    return MultiViewMapper(views=specs, color=no_colour, interp=interp)


def painted_extent(region: np.ndarray):
    """(x1, y1, x2, y2) of the True pixels, continuous (x2 exclusive); None if empty."""
    ys, xs = np.nonzero(region)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


@st.composite
def view_cases(draw):
    height, width = draw(st.integers(6, 120)), draw(st.integers(6, 120))
    kind = draw(st.sampled_from(["whole", "crop", "downsample"]))
    if kind == "whole":
        rect = (0, 0, width, height)
    else:
        cw, ch = draw(st.integers(1, width)), draw(st.integers(1, height))
        rect = (draw(st.integers(0, width - cw)), draw(st.integers(0, height - ch)), cw, ch)
    size = draw(st.integers(4, 96))
    # a downsampled view shrinks its source view (SoCo*'s V4: 224 -> 112)
    source_size = draw(st.integers(size, 128)) if kind == "downsample" else None
    flips = (draw(st.booleans()), draw(st.booleans()))
    boxes = []
    for _ in range(draw(st.integers(1, 4))):
        x1, y1 = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
        boxes.append((x1, y1, draw(st.integers(x1 + 1, width)), draw(st.integers(y1 + 1, height))))
    return height, width, kind, rect, size, source_size, flips, boxes


def view_geometry(case, interp="nearest"):
    height, width, kind, rect, size, source_size, flips, _ = case
    if kind == "downsample":
        mapper = geometry_mapper([ViewSpec(source_size, "crop"), ViewSpec(size, "downsample", 0)], interp)
        return mapper, mapper.geometry([rect, rect], list(flips), height, width), 1
    mapper = geometry_mapper([ViewSpec(size, kind)], interp)
    return mapper, mapper.geometry([rect], [flips[0]], height, width), 0


@HYPOTHESIS
@given(view_cases())
def test_carried_box_matches_painted_label_map(case):
    """A box clipped to the window and moved by the view's transforms covers the same
    pixels as the box painted into a label map that goes through the same view."""
    height, width, kind, rect, *_rest, boxes = case
    _, geoms, v = view_geometry(case)
    geom = geoms[v]
    for box in boxes:
        label = np.zeros((height, width), dtype=np.int32)
        label[box[1] : box[3], box[0] : box[2]] = 7
        view_label = geom.transforms.apply_segmentation(label)
        assert view_label.shape == (geom.spec.size, geom.spec.size)
        clipped = B.clip_to_rect(np.array([box], float), rect)
        if not B.overlaps_rect(np.array([box], float), rect)[0]:
            assert not (view_label == 7).any()
            continue
        carried = boxes_to_view(clipped, geom)[0]
        # the same as detectron2's own apply_box through the view's transforms
        reference = np.clip(geom.transforms.apply_box(clipped), 0, geom.spec.size)[0]
        np.testing.assert_allclose(carried, reference, rtol=1e-6, atol=1e-4)
        painted = painted_extent(view_label == 7)
        slack = 2.0 if kind == "downsample" else 1.0  # two nearest resamplings may lose a thin box
        if painted is None:
            assert min(carried[2] - carried[0], carried[3] - carried[1]) < slack
            continue
        np.testing.assert_allclose(carried, painted, atol=1.0)


@HYPOTHESIS
@given(view_cases())
def test_carried_box_matches_painted_image(case):
    """The same through the mapper's image path (render: crop, resize, source-view
    resize for downsampled views, flip), nearest interpolation: exact pixels."""
    height, width, kind, rect, *_rest, boxes = case
    mapper, geoms, v = view_geometry(case)
    for box in boxes:
        image = np.zeros((height, width, 3), dtype=np.uint8)
        image[box[1] : box[3], box[0] : box[2]] = 255
        views = mapper.render(image, geoms)
        assert views[v].shape == (3, geoms[v].spec.size, geoms[v].spec.size) and views[v].dtype == torch.uint8
        if not B.overlaps_rect(np.array([box], float), rect)[0]:
            continue
        carried = boxes_to_view(B.clip_to_rect(np.array([box], float), rect), geoms[v])[0]
        painted = painted_extent(views[v][0].numpy() == 255)
        slack = 2.0 if kind == "downsample" else 1.0
        if painted is None:
            assert min(carried[2] - carried[0], carried[3] - carried[1]) < slack
            continue
        np.testing.assert_allclose(carried, painted, atol=1.0)


@HYPOTHESIS
@given(view_cases())
def test_carried_box_matches_bilinear_image(case):
    """With the training interpolation (torchvision's antialiased bilinear, within a
    level of PIL's) the half-intensity contour of a painted box is the carried box,
    within a pixel."""
    height, width, kind, rect, *_rest, boxes = case
    mapper, geoms, v = view_geometry(case, interp="bilinear")
    for box in boxes:
        if not B.overlaps_rect(np.array([box], float), rect)[0]:
            continue
        carried = boxes_to_view(B.clip_to_rect(np.array([box], float), rect), geoms[v])[0]
        if min(carried[2] - carried[0], carried[3] - carried[1]) < 4:
            continue  # a thin box never reaches full intensity
        image = np.zeros((height, width, 3), dtype=np.uint8)
        image[box[1] : box[3], box[0] : box[2]] = 255
        painted = painted_extent(mapper.render(image, geoms)[v][0].numpy() >= 128)
        assert painted is not None
        np.testing.assert_allclose(carried, painted, atol=1.0)


def test_random_resized_crop_is_a_detectron2_augmentation():
    """Through detectron2's AugInput, boxes and sem_seg move with the image."""
    np.random.seed(3)
    image = np.zeros((90, 140, 3), dtype=np.uint8)
    label = np.zeros((90, 140), dtype=np.int32)
    box = np.array([[30.0, 20.0, 100.0, 70.0]])
    image[20:70, 30:100] = 255
    label[20:70, 30:100] = 5
    for _ in range(20):
        aug_input = T.AugInput(image.copy(), boxes=box.copy(), sem_seg=label.copy())
        T.AugmentationList([RandomResizedCrop(64, scale=(0.3, 1.0), interp=Image.NEAREST), T.RandomFlip(0.5)])(aug_input)
        assert aug_input.image.shape == (64, 64, 3) and aug_input.sem_seg.shape == (64, 64)
        carried = np.clip(aug_input.boxes[0], 0, 64)
        painted = painted_extent(aug_input.sem_seg == 5)
        if painted is None or min(carried[2] - carried[0], carried[3] - carried[1]) < 1:
            continue
        np.testing.assert_allclose(carried, painted, atol=1.0)
        np.testing.assert_array_equal(aug_input.image[:, :, 0] == 255, aug_input.sem_seg == 5)


def test_crop_sampling_follows_scale_and_ratio():
    np.random.seed(0)
    for _ in range(300):
        x0, y0, w, h = sample_crop_rect(200, 300, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3))
        assert 0 <= x0 and x0 + w <= 300 and 0 <= y0 and y0 + h <= 200
        area = w * h / (200 * 300)
        assert 0.5 - 0.02 <= area <= 1.0 + 1e-9
        assert 3 / 4 - 0.03 <= w / h <= 4 / 3 + 0.03


def test_crop_fallbacks():
    np.random.seed(0)
    # a 10 x 1000 strip: no 3/4..4/3 window of >= 8 % of the area fits
    assert sample_crop_rect(10, 1000, (0.08, 1.0), (3 / 4, 4 / 3), attempts=10, fallback="center") == (493, 0, 13, 10)
    for _ in range(50):  # DetCon: single attempt, width/height clipped to the image, uniform offset
        x0, y0, w, h = sample_crop_rect(10, 1000, (0.08, 1.0), (3 / 4, 4 / 3), attempts=1, fallback="clip")
        assert h == 10 and 0 < w <= 1000 and 0 <= x0 <= 1000 - w and y0 == 0
    with pytest.raises(ValueError):
        sample_crop_rect(10, 10, fallback="nope")


# ----------------------------------------------------------------- SoCo box bookkeeping
def test_overlap_is_strict_and_clip_intersects():
    boxes = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [5, 5, 15, 15], [30, 30, 40, 40]], float)
    rect = (10, 0, 20, 20)  # x 10..30, y 0..20
    np.testing.assert_array_equal(B.overlaps_rect(boxes, rect), [False, True, True, False])
    np.testing.assert_array_equal(B.clip_to_rect(boxes[2:3], rect), [[10, 5, 15, 15]])
    np.testing.assert_array_equal(B.overlaps_rect(boxes, (0, 0, 0, 5)), [False] * 4)


def test_sanitize_whole_image_when_no_proposals():
    np.testing.assert_array_equal(B.sanitize_proposals(np.zeros((0, 4)), 30, 50), [[0, 0, 50, 30]])
    # degenerate and outside boxes are dropped, the rest clipped
    got = B.sanitize_proposals([[5, 5, 5, 9], [60, 0, 70, 10], [-3, 2, 10, 40]], 30, 50)
    np.testing.assert_array_equal(got, [[0, 2, 10, 30]])
    np.testing.assert_array_equal(B.sanitize_proposals([[60, 0, 70, 10]], 30, 50), [[0, 0, 50, 30]])


def test_jitter_formula():
    boxes = np.array([[10.0, 20.0, 50.0, 100.0], [0.0, 0.0, 8.0, 4.0], [3.0, 5.0, 30.0, 9.0]])
    np.random.seed(11)
    got = B.jitter_boxes(boxes, prob=1.0, ratio=0.1)
    np.random.seed(11)
    for box, out in zip(boxes, got):
        np.random.uniform()  # the coin
        u0, u1, u2, u3 = np.random.uniform(-0.1, 0.1, size=4)
        # SoCo's jitter formula (docs/methods/soco.md, Box jitter) on inclusive corners (x2_incl = x2 - 1), converted back
        x1, y1, x2i, y2i = box[0], box[1], box[2] - 1, box[3] - 1
        w, h = x2i - x1 + 1, y2i - y1 + 1
        nx1, ny1, nw, nh = x1 + u0 * w, y1 + u1 * h, w * (1 + u2), h * (1 + u3)
        nx2i, ny2i = nx1 + nw - 1, ny1 + nh - 1
        np.testing.assert_allclose(out, [nx1, ny1, nx2i + 1, ny2i + 1])
        assert abs(out[0] - box[0]) <= 0.1 * w and 0.9 * w <= out[2] - out[0] <= 1.1 * w
    # probability: about half the boxes move; ratio 0 or prob 0 move none
    np.random.seed(0)
    many = np.tile(boxes[:1], (4000, 1))
    moved = (B.jitter_boxes(many, 0.5, 0.1) != many).any(axis=1).mean()
    assert 0.46 < moved < 0.54
    np.testing.assert_array_equal(B.jitter_boxes(many, 0.0, 0.1), many)


def test_selection_without_replacement_and_padding():
    np.random.seed(5)
    cand = np.arange(10, 20)
    for _ in range(50):
        sel = B.select_random(cand, 4)
        assert len(sel) == 4 and len(set(sel.tolist())) == 4 and set(sel.tolist()) <= set(cand.tolist())
    assert sorted(B.select_random(cand[:3], 4).tolist()) == [10, 11, 12]
    pad = B.pad_indices(2, 4)
    assert pad[:2].tolist() == [0, 1] and set(pad[2:].tolist()) <= {0, 1} and len(pad) == 4
    assert B.pad_indices(6, 4).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        B.pad_indices(0, 4)


class ScriptedRects:
    """Crop windows in a fixed order, counting the draws."""

    def __init__(self, *rect_lists):
        self.rect_lists, self.calls = list(rect_lists), 0

    def __call__(self):
        rects = self.rect_lists[min(self.calls, len(self.rect_lists) - 1)]
        self.calls += 1
        return rects


PROPS = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10], [80, 0, 90, 10]], float)
WHOLE = (0, 0, 100, 100)


@pytest.mark.parametrize(
    "windows, expected_tries",
    [
        # 5 candidates at once: accepted at the first draw
        ([(0, 0, 100, 50)], 1),
        # 1 candidate (< least_common 2) -> redraw with least_common 1 -> 1 candidate accepted
        ([(0, 0, 15, 50), (0, 0, 15, 50)], 2),
        # never a candidate: all 5 tries used, the last draw kept
        ([(0, 50, 100, 50)], 5),
    ],
)
def test_retry_loop(windows, expected_tries):
    np.random.seed(0)
    sampler = ScriptedRects(*[[WHOLE, w] for w in windows])
    rects, sels, tries = B.select_pairs_with_retries(PROPS, sampler, [(0, 1)], k=4, max_tries=5)
    assert tries == expected_tries == sampler.calls
    assert rects[1] == windows[min(expected_tries, len(windows)) - 1]
    overlapping = np.nonzero(B.overlaps_rect(PROPS, rects[1]))[0]
    assert len(sels[0].indices) == min(4, len(overlapping)) and set(sels[0].indices) <= set(overlapping)


def test_retry_least_common_halves():
    """least_common: 2 at try 1, 1 afterwards; a pair with one candidate fails try 1 only."""
    np.random.seed(0)
    two_pairs = ScriptedRects([WHOLE, (0, 0, 100, 50), (0, 0, 15, 50)])
    _, sels, tries = B.select_pairs_with_retries(PROPS, two_pairs, [(0, 1), (0, 2)], k=4, max_tries=5)
    assert tries == 2 and [len(s.indices) for s in sels] == [4, 1]
    # k = 8: least_common 4 -> 2 -> 1: a pair with 2 candidates is accepted at try 2
    _, _, tries = B.select_pairs_with_retries(PROPS, ScriptedRects([WHOLE, (0, 0, 35, 50)]), [(0, 1)], k=8, max_tries=5)
    assert tries == 2


def test_pair_boxes_pad_and_keep_ids():
    np.random.seed(2)
    ids = np.arange(1, 6)
    sel = B.PairSelection((0, 1), np.array([3, 1]))
    rect_b = (15, 0, 50, 50)  # clips proposal 1 (x 20..30) nothing, proposal 3 (x 60..70) to 60..65
    pb = B.build_pair_boxes(PROPS, ids, sel, WHOLE, rect_b, k=4)
    assert not pb.fallback
    for side in (0, 1):
        assert pb.boxes[side].shape == (4, 4) and pb.ids[side].shape == (4,)
        assert pb.ids[side][:2].tolist() == [4, 2] and set(pb.ids[side][2:].tolist()) <= {2, 4}
    np.testing.assert_array_equal(pb.boxes[0][:2], PROPS[[3, 1]])
    np.testing.assert_array_equal(pb.boxes[1][:2], [[60, 0, 65, 10], [20, 0, 30, 10]])
    for side in (0, 1):  # duplicates are exact copies of the box with the same id
        for i in range(4):
            first = np.nonzero(pb.ids[side] == pb.ids[side][i])[0][0]
            np.testing.assert_array_equal(pb.boxes[side][i], pb.boxes[side][first])


def test_pair_boxes_jitter_only_side_a_and_clip():
    np.random.seed(4)
    sel = B.PairSelection((0, 1), np.array([0, 4]))
    pb = B.build_pair_boxes(PROPS, np.arange(1, 6), sel, WHOLE, WHOLE, k=2, jitter_prob=1.0, jitter_ratio=0.1)
    np.testing.assert_array_equal(pb.boxes[1], PROPS[[0, 4]])
    assert (pb.boxes[0] != PROPS[[0, 4]]).any()
    assert (pb.boxes[0] >= 0).all() and (pb.boxes[0] <= 100).all()  # clipped to view 0


def test_pair_without_candidates_becomes_whole_views():
    np.random.seed(0)
    sel = B.PairSelection((0, 1), np.zeros(0, dtype=np.int64))
    pb = B.build_pair_boxes(PROPS, np.arange(1, 6), sel, WHOLE, (10, 40, 30, 20), k=4, jitter_prob=1.0, jitter_ratio=0.1)
    assert pb.fallback
    np.testing.assert_array_equal(pb.boxes[0], [[0, 0, 100, 100]] * 4)
    np.testing.assert_array_equal(pb.boxes[1], [[10, 40, 40, 60]] * 4)
    assert pb.ids[0].tolist() == [1] * 4 == pb.ids[1].tolist()


# ----------------------------------------------------------------------------- cutout
def cutout_in_boxes(image, boxes, prob=0.5, ratio=(0.1, 0.3), fill=(0.0, 0.0, 0.0)):
    """SoCo's cutout as the mapper draws it and ``apply_photometry`` fills it: (the
    image, the squares that fired)."""
    squares = sample_cutout_squares(boxes, image.shape[1], image.shape[2], prob, ratio)
    params = PhotometricBatch.from_views([ViewPhotometry(cutout=squares)])
    out = apply_photometry(image[None], params, fill, (1.0, 1.0, 1.0), normalize=False)[0]
    return out, [tuple(int(v) for v in sq) for sq in squares if sq[2] > sq[0] and sq[3] > sq[1]]


def test_cutout_squares_inside_boxes_with_the_fill_value():
    np.random.seed(1)
    mean = (123.675, 116.28, 103.53)
    boxes = np.array([[20.3, 30.0, 60.0, 50.7], [70.0, 10.0, 90.0, 90.0], [40.0, 60.0, 45.0, 66.0]])
    for _ in range(30):
        image, squares = cutout_in_boxes(torch.full((3, 112, 112), 7.0), boxes, prob=1.0, ratio=(0.1, 0.3), fill=mean)
        assert len(squares) == 3
        expected = torch.zeros(112, 112, dtype=torch.bool)
        for (x0, y0, x1, y1), box in zip(squares, boxes):
            expected[y0:y1, x0:x1] = True
            ix1, iy1, ix2, iy2 = math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]) - 1, math.ceil(box[3]) - 1
            area = (ix2 - ix1 + 1) * (iy2 - iy1 + 1)
            side = x1 - x0
            assert y1 - y0 == side  # not clipped: these boxes are far from the border
            assert round(math.sqrt(0.1 * area)) <= side <= round(math.sqrt(0.3 * area))
            cx, cy = x0 + side // 2, y0 + side // 2
            assert ix1 <= cx <= ix2 and iy1 <= cy <= iy2
        changed = (image != 7.0).any(dim=0)
        assert torch.equal(changed, expected)
        for c in range(3):
            assert torch.allclose(image[c][changed], torch.tensor(mean[c]))
    image, squares = cutout_in_boxes(torch.full((3, 112, 112), 7.0), boxes, prob=0.0)
    assert squares == [] and torch.all(image == 7.0)
    np.random.seed(0)
    fired = sum(len(cutout_in_boxes(torch.zeros(3, 112, 112), boxes, prob=0.5)[1]) for _ in range(400))
    assert 0.45 < fired / 1200 < 0.55


def test_cutout_clipped_at_the_border():
    np.random.seed(0)
    image, squares = cutout_in_boxes(torch.zeros(3, 32, 32), np.array([[0.0, 0.0, 32.0, 32.0]] * 20), prob=1.0,
                                     fill=(1, 2, 3))
    for x0, y0, x1, y1 in squares:
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
    assert set(image[0].unique().tolist()) <= {0.0, 1.0}
