"""SoCo's filter rules and fallback chain on hand-made boxes, and the box conventions."""
import numpy as np
import pytest

from soco_d2.proposals.boxes import (
    cv_rects_to_xyxy,
    map_boxes_to_original,
    official_rects_to_xyxy,
    xyxy_to_official_rects,
)
from soco_d2.proposals.filters import EMPTY_STAGE, FilterPolicy, parse_official_strategy

H, W = 400, 400  # sqrt(W*H) = 400: size ratio = sqrt(w*h) / 400


def xyxy(x, y, w, h):
    """A box whose *official* width/height (x2 - x1 - 1) is w/h."""
    return [x, y, x + w + 1, y + h + 1]


PAPER = parse_official_strategy("ratio3size0308post")


def keep(policy, boxes, stage="main"):
    return policy.stage_mask(stage, np.array(boxes), H, W).tolist()


def test_official_rect_conversions_round_trip():
    rects = np.array([[3, 5, 7, 0], [0, 0, 399, 399]])
    boxes = official_rects_to_xyxy(rects)
    # a region covering columns 3..10 is the official rect x=3, w=7 and our x1=3, x2=11
    assert boxes[0].tolist() == [3, 5, 11, 6]
    assert boxes[1].tolist() == [0, 0, 400, 400]
    assert np.array_equal(xyxy_to_official_rects(boxes), rects)
    # OpenCV rects carry the pixel extent
    assert cv_rects_to_xyxy([[3, 5, 8, 1]]).tolist() == [[3, 5, 11, 6]]


def test_min_side_rule_uses_the_official_width():
    # sizes 160 (ratio 0.4) so only the min-side rule can fail
    boxes = [xyxy(0, 0, 32, 200), xyxy(0, 0, 31, 200), xyxy(0, 0, 200, 32), xyxy(0, 0, 200, 31)]
    m = PAPER.rule_masks(np.array(boxes), H, W)["min_side"].tolist()
    assert m == [True, False, True, False]
    extent = FilterPolicy(size_convention="extent")
    # with the pixel extent, a box of official width 31 is 32 px wide and passes
    assert extent.rule_masks(np.array(boxes), H, W)["min_side"].tolist() == [True, True, True, True]


def test_aspect_rule_bounds():
    boxes = [xyxy(0, 0, 60, 180), xyxy(0, 0, 180, 60), xyxy(0, 0, 59, 180), xyxy(0, 0, 181, 60), xyxy(0, 0, 100, 100)]
    assert PAPER.rule_masks(np.array(boxes), H, W)["aspect"].tolist() == [True, True, False, False, True]


def test_size_ratio_rule_bounds():
    # sqrt(w*h)/400: 120 -> 0.3 (kept), 119 -> <0.3, 320 -> 0.8 (kept), 321 -> >0.8
    boxes = [xyxy(0, 0, 120, 120), xyxy(0, 0, 119, 119), xyxy(0, 0, 320, 320), xyxy(0, 0, 321, 321)]
    m = PAPER.rule_masks(np.array(boxes), H, W)
    assert m["min_size_ratio"].tolist() == [True, False, True, True]
    assert m["max_size_ratio"].tolist() == [True, True, True, False]
    assert keep(PAPER, boxes) == [True, False, True, False]


def test_main_stage_needs_every_rule():
    good = xyxy(10, 10, 150, 150)
    thin = xyxy(10, 10, 31, 150)  # min side fails (and aspect 4.8)
    flat = xyxy(10, 10, 200, 50)  # aspect 4 fails
    small = xyxy(10, 10, 40, 40)  # size 0.1 fails
    big = xyxy(0, 0, 390, 390)  # size 0.975 fails
    assert keep(PAPER, [good, thin, flat, small, big]) == [True, False, False, False, False]
    kept, stage = PAPER.apply([thin, good, big], H, W)
    assert stage == 0 and kept.tolist() == [good]


def test_fallback_chain_ratio_then_min_side_then_whole_image():
    small_square = xyxy(5, 5, 40, 40)  # fails size only -> kept by the aspect-only fallback
    small_flat = xyxy(5, 5, 150, 40)  # aspect 3.75: fails aspect too -> kept by min-side-only
    tiny = xyxy(5, 5, 10, 10)  # fails min side: nothing keeps it
    assert PAPER.stages == ("main", "ratio", "none", "whole_image")

    kept, stage = PAPER.apply([small_flat, small_square], H, W)
    assert PAPER.stages[stage] == "ratio" and kept.tolist() == [small_square]

    kept, stage = PAPER.apply([tiny, small_flat], H, W)
    assert PAPER.stages[stage] == "none" and kept.tolist() == [small_flat]

    kept, stage = PAPER.apply([tiny], H, W)
    assert PAPER.stages[stage] == "whole_image" and kept.tolist() == [[0, 0, W, H]]

    kept, stage = PAPER.apply(np.zeros((0, 4)), H, W)
    assert PAPER.stages[stage] == "whole_image"

    no_whole = parse_official_strategy("ratio3size0308post", whole_image=False)
    kept, stage = no_whole.apply([tiny], H, W)
    assert stage == EMPTY_STAGE and len(kept) == 0


def test_chain_is_configurable():
    policy = FilterPolicy(fallbacks=("size", "whole_image"))
    small_flat = xyxy(5, 5, 150, 40)  # size ~0.19: the size stage fails too
    flat = xyxy(5, 5, 300, 90)  # aspect 3.3 fails, size 0.41 passes the size stage
    kept, stage = policy.apply([small_flat, flat], H, W)
    assert policy.stages[stage] == "size" and kept.tolist() == [flat]
    raw = parse_official_strategy("raw")
    kept, stage = raw.apply([xyxy(0, 0, 1, 1), flat], H, W)
    assert stage == 0 and len(kept) == 2
    with pytest.raises(ValueError, match="unknown filter stage"):
        FilterPolicy(fallbacks=("bogus",))
    with pytest.raises(ValueError):
        FilterPolicy(min_size_ratio=0.9, max_size_ratio=0.8)


def test_max_boxes_and_dedup():
    a, b = xyxy(10, 10, 150, 150), xyxy(20, 20, 160, 160)
    policy = FilterPolicy(max_boxes=2, dedup=True)
    kept, _ = policy.apply([a, a, b, a, b], H, W)
    assert kept.tolist() == [a, b]
    kept, _ = FilterPolicy(max_boxes=2).apply([a, a, b], H, W)
    assert kept.tolist() == [a, a]


def test_official_strategy_names():
    p = parse_official_strategy("ratio3size0308")
    assert (p.min_side, p.max_aspect, p.min_size_ratio, p.max_size_ratio) == (32, 3.0, 0.3, 0.8)
    assert p.fallbacks == ("whole_image",)
    assert parse_official_strategy("ratio3size0308post").fallbacks == ("ratio", "none", "whole_image")
    p = parse_official_strategy("none", whole_image=False)
    assert (p.max_aspect, p.min_size_ratio, p.max_size_ratio, p.fallbacks) == (0, 0, 0, ())
    p = parse_official_strategy("ratio2")
    assert (p.max_aspect, p.min_size_ratio) == (2.0, 0)
    p = parse_official_strategy("size03")
    assert (p.max_aspect, p.min_size_ratio, p.max_size_ratio) == (0, 0.3, 0)
    for bad in ("", "ratio", "sizes", "post", "ratio3size03081"):
        with pytest.raises(ValueError, match="filter strategy"):
            parse_official_strategy(bad)
    assert FilterPolicy.from_dict(PAPER.to_dict()) == PAPER


def test_map_boxes_back_after_resize():
    # a 400x300 image segmented at 200x150: every edge doubles
    boxes = np.array([[3, 5, 11, 6], [0, 0, 200, 150], [199, 149, 200, 150]])
    out = map_boxes_to_original(boxes, (150, 200), (300, 400))
    assert out.tolist() == [[6, 10, 22, 12], [0, 0, 400, 300], [398, 298, 400, 300]]
    # non-integer factor: rounded to the nearest pixel edge, clipped, never empty
    out = map_boxes_to_original(np.array([[0, 0, 1, 1], [66, 0, 67, 100]]), (100, 67), (300, 200))
    assert out.tolist() == [[0, 0, 3, 3], [197, 0, 200, 300]]
    assert (out[:, 2] > out[:, 0]).all() and (out[:, 3] > out[:, 1]).all()
    same = np.array([[1, 2, 3, 4]])
    assert map_boxes_to_original(same, (10, 10), (10, 10)).tolist() == same.tolist()
