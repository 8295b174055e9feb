"""The on-disk cache: exact round trips through mmap, merging, the official JSON."""
import json
import os
import pickle

import numpy as np
import pytest

from soco_d2.proposals import CacheWriter, ProposalCache, export_official_json, import_official_json, merge_caches
from soco_d2.proposals.cache import key_hashes

HEADER = {"method": "selective_search", "generator": {"filter_stages": ["main", "ratio"]}, "versions": {"x": "1"},
          "source": {"dataset": "test"}}


def random_boxes(rng, n, h, w):
    x1 = rng.integers(0, w - 1, n)
    y1 = rng.integers(0, h - 1, n)
    x2 = np.minimum(w, x1 + 1 + rng.integers(0, w, n))
    y2 = np.minimum(h, y1 + 1 + rng.integers(0, h, n))
    return np.stack([x1, y1, x2, y2], 1)


def make_images(seed=0, n=150):
    rng = np.random.default_rng(seed)
    images = {}
    for i in range(n):
        h, w = int(rng.integers(1, 700)), int(rng.integers(1, 700))
        count = int(rng.choice([0, 1, 3, 40, 300]))
        images[f"cls{i % 7}/img_{i}"] = (h, w, random_boxes(rng, count, max(h, 2), max(w, 2)), i % 2)
    # sizes where coordinates need 2 and 4 bytes, many distinct values (2-byte indices)
    images["big/wide"] = (70000, 80000, random_boxes(rng, 400, 70000, 80000), 0)
    images["big/one"] = (5, 5, np.array([[0, 0, 5, 5]]), 1)
    return {k: (max(h, 2) if len(b) else h, max(w, 2) if len(b) else w, b, s) for k, (h, w, b, s) in images.items()}


def write(path, images, order=None, **kw):
    with CacheWriter(path, "boxes", HEADER, **kw) as w:
        for key in order or images:
            h, wd, b, s = images[key]
            w.add_boxes(key, h, wd, b, stage=s)
        w.add_skipped("bad/img", "corrupt: cannot identify image file")
    return path


def test_boxes_round_trip_exact(tmp_path):
    images = make_images()
    path = write(str(tmp_path / "c.pcache"), images)
    with ProposalCache(path) as c:
        assert c.kind == "boxes" and len(c) == len(images)
        assert c.keys() == sorted(images, key=lambda k: k.encode())
        for key, (h, w, b, s) in images.items():
            got = c[key]
            assert got.dtype == np.float32 and got.shape == (len(b), 4)
            assert np.array_equal(got, b.astype(np.float32)), key
            assert c.image_size(key) == (h, w)
            assert c.stage(key) == ["main", "ratio"][s]
            assert key in c
        assert c.skipped == {"bad/img": "corrupt: cannot identify image file"}
        assert "bad/img" not in c and "nope" not in c
        assert c.header["stats"]["boxes"] == sum(len(v[2]) for v in images.values())
        assert c.header["versions"] == {"x": "1"} and c.method == "selective_search"
        with pytest.raises(KeyError, match="nope.*" + os.path.basename(path)):
            c["nope"]
        # pickling re-opens by path (dataloader workers)
        c2 = pickle.loads(pickle.dumps(c))
        assert np.array_equal(c2["big/wide"], c["big/wide"])
        c2.close()


def test_integer_keys_and_small_blocks(tmp_path):
    path = str(tmp_path / "c.pcache")
    with CacheWriter(path, "boxes", HEADER, block_size=3) as w:
        for i in range(10):
            w.add_boxes(i, 10, 10, [[0, 0, i + 1, 10]])
    with ProposalCache(path) as c:
        assert c[7].tolist() == [[0, 0, 8, 10]]
        assert c["7"].tolist() == [[0, 0, 8, 10]] and 7 in c
        assert len(c.keys()) == 10


def test_file_bytes_depend_only_on_content(tmp_path):
    images = make_images(1, 60)
    a = write(str(tmp_path / "a.pcache"), images)
    b = write(str(tmp_path / "b.pcache"), images, order=list(reversed(list(images))))
    assert open(a, "rb").read() == open(b, "rb").read()


def test_merge_equals_single_write(tmp_path):
    images = make_images(2, 80)
    keys = list(images)
    single = write(str(tmp_path / "single.pcache"), images)
    parts = []
    for i in range(3):
        p = str(tmp_path / f"part{i}.pcache")
        with CacheWriter(p, "boxes", dict(HEADER, shard={"num_shards": 3, "shard_id": i})) as w:
            for key in keys[i::3]:
                h, wd, b, s = images[key]
                w.add_boxes(key, h, wd, b, stage=s)
            if i == 1:
                w.add_skipped("bad/img", "corrupt: cannot identify image file")
        parts.append(p)
    merged = merge_caches(parts, str(tmp_path / "merged.pcache"))
    assert open(merged, "rb").read() == open(single, "rb").read()
    with pytest.raises(ValueError, match="missing \\[2\\]"):
        merge_caches(parts[:2], str(tmp_path / "x.pcache"))
    other = str(tmp_path / "other.pcache")
    with CacheWriter(other, "boxes", dict(HEADER, versions={"x": "2"})) as w:
        w.add_boxes("zzz", 4, 4, [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="versions"):
        merge_caches([single, other], str(tmp_path / "y.pcache"), require_all_shards=False)


def test_masks_round_trip_with_enough_bits(tmp_path):
    rng = np.random.default_rng(0)
    maps = {
        "u8": rng.integers(0, 256, (37, 53)),  # fits in a byte
        "u16": np.arange(300 * 301).reshape(300, 301) % 70000 % 65536,  # > 256 ids: DetCon's uint8 would wrap
        "i32": np.arange(260 * 260).reshape(260, 260) * 3,  # ids beyond 65535
        "one": np.zeros((4, 9), np.int64),
    }
    path = str(tmp_path / "m.pcache")
    with CacheWriter(path, "masks", dict(HEADER, method="felzenszwalb")) as w:
        for k, m in maps.items():
            w.add_mask(k, m.shape[0] * 2, m.shape[1] * 2, m)  # stored at half the original size
    with ProposalCache(path) as c:
        assert c.kind == "masks"
        for k, m in maps.items():
            got = c[k]
            assert np.array_equal(got, m), k
            assert got.dtype == (np.int32 if k == "i32" else np.uint16)
            assert c.image_size(k) == (m.shape[0] * 2, m.shape[1] * 2)
        assert c.header["stats"]["max_segments_per_image"] == int(maps["i32"].max()) + 1


def test_bad_records_and_files(tmp_path):
    path = str(tmp_path / "c.pcache")
    w = CacheWriter(path, "boxes", HEADER)
    with pytest.raises(ValueError, match="outside"):
        w.add_boxes("a", 10, 10, [[0, 0, 11, 5]])
    with pytest.raises(ValueError, match="empty"):
        w.add_boxes("a", 10, 10, [[3, 0, 3, 5]])
    with pytest.raises(ValueError, match="integer"):
        w.add_boxes("a", 10, 10, [[0.5, 0, 3, 5]])
    w.add_boxes("a", 10, 10, [[0, 0, 10, 10]])
    with pytest.raises(ValueError, match="twice"):
        w.add_boxes("a", 10, 10, [[0, 0, 10, 10]])
    w.commit()
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 5])
    with pytest.raises(ValueError, match="truncated"):
        ProposalCache(path)
    open(path, "wb").write(b"not a cache at all")
    with pytest.raises(ValueError, match="not a soco_d2 proposal cache"):
        ProposalCache(path)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_official_json_round_trips(tmp_path):
    rects = {
        "n01_1": [[0, 0, 99, 49], [3, 5, 7, 0], [10, 10, 40, 30]],
        "n01_2": [],
        "n02_7": [[5, 6, 20, 30]],
    }
    src = tmp_path / "official.json"
    src.write_text(json.dumps(rects))
    dicts = [{"image_id": "n01/n01_1", "file_name": "x", "height": 50, "width": 100},
             {"image_id": "n01/n01_2", "file_name": "y", "height": 20, "width": 20},
             {"image_id": "n02/n02_7", "file_name": "z", "height": 40, "width": 30},
             {"image_id": "n02/n02_8", "file_name": "w", "height": 40, "width": 30}]
    cache = str(tmp_path / "c.pcache")
    counts = import_official_json(str(src), dicts, cache)
    assert counts["images"] == 3 and counts["missing_images"] == 1 and counts["clipped"] == 0
    with ProposalCache(cache) as c:
        # official x, y, w, h (w = max - min) -> XYXY with x2 exclusive
        assert c["n01/n01_1"].tolist() == [[0, 0, 100, 50], [3, 5, 11, 6], [10, 10, 51, 41]]
        assert len(c["n01/n01_2"]) == 0 and c.stage("n01/n01_2") == "empty"
    out = tmp_path / "back.json"
    export_official_json(cache, str(out))
    assert json.loads(out.read_text()) == rects  # JSON -> cache -> JSON
    cache2 = str(tmp_path / "c2.pcache")
    import_official_json(str(out), dicts, cache2)  # cache -> JSON -> cache
    with ProposalCache(cache) as a, ProposalCache(cache2) as b:
        assert a.keys() == b.keys()
        assert all(np.array_equal(a[k], b[k]) for k in a.keys())


def test_hash_is_stable():
    # the on-disk hash table depends on it: it must never change between versions
    assert key_hashes(b"astronaut") == key_hashes("astronaut".encode())
    h, fp = key_hashes(b"astronaut")
    assert 0 <= h < 2**48 and 0 <= fp < 2**16


def test_boxes_mapped_back_from_a_grid_are_stored_in_grid_units(tmp_path):
    from soco_d2.proposals.boxes import map_boxes_to_original
    from soco_d2.proposals.codec import box_record_grid, encode_boxes

    rng = np.random.default_rng(3)
    images = {}
    for i in range(40):
        H, W = int(rng.integers(200, 1500)), int(rng.integers(200, 1500))
        s = 192 / max(H, W)
        h, w = max(1, round(H * s)), max(1, round(W * s))
        small = random_boxes(rng, 60, h, w)
        images[f"im{i}"] = (H, W, map_boxes_to_original(small, (h, w), (H, W)), (h, w))
    on_grid = str(tmp_path / "grid.pcache")
    plain = str(tmp_path / "plain.pcache")
    with CacheWriter(on_grid, "boxes", HEADER) as a, CacheWriter(plain, "boxes", HEADER) as b:
        for k, (H, W, boxes, grid) in images.items():
            a.add_boxes(k, H, W, boxes, grid=grid)
            b.add_boxes(k, H, W, boxes)
    with ProposalCache(on_grid) as c:
        for k, (H, W, boxes, grid) in images.items():
            assert np.array_equal(c[k], boxes.astype(np.float32))
            assert box_record_grid(c.record(k)) == grid
    assert os.path.getsize(on_grid) < 0.9 * os.path.getsize(plain)
    # a grid hint that does not fit the boxes is dropped: still exact
    rec = encode_boxes([[0, 3, 7, 5], [1, 2, 10, 10]], 10, 10, grid=(4, 3))  # y=3 and x=1 are off the grids
    assert box_record_grid(rec) == (0, 0)
