"""Caches that check themselves: every corrupt byte is caught on read, old
(format 1) files still read with a warning, --verify checks a whole file, and a
cache is checked against its use (kind, dataset) before training starts."""
import logging
import os
import shutil

import numpy as np
import pytest

from soco_d2.proposals import CacheWriter, ProposalCache
from tool_utils import load_tool
from soco_d2.proposals.cache import _HEAD, CacheCorruptError, CacheError, _align, image_ids_digest
from soco_d2.proposals.verify import check_cache, verify_cache

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
HEADER = {"method": "selective_search", "generator": {"filter_stages": ["main", "ratio"], "preset": "single"},
          "versions": {"x": "1"}, "source": {"dataset": "tiny_set"}}
IDS = [f"img{i}" for i in range(5)]


def box_cache(path):
    with CacheWriter(path, "boxes", HEADER, block_size=2) as w:
        for i, key in enumerate(IDS):
            w.add_boxes(key, 20 + i, 30, [[0, 0, 5 + i, 7], [2, 3, 10, 20], [1, 1, 29, 19]], stage=i % 2)
        w.add_skipped("broken", "corrupt: cannot identify image file")
    return path


def mask_cache(path):
    with CacheWriter(path, "masks", dict(HEADER, method="felzenszwalb")) as w:
        for i, key in enumerate(IDS[:3]):
            w.add_mask(key, 12, 16, np.arange(12 * 16).reshape(12, 16) // (20 + i))
    return path


def read_everything(path):
    """What a user of the cache can read: every key, value, size and stage."""
    with ProposalCache(path) as c:
        out = {"skipped": c.skipped, "keys": c.keys()}
        for key in out["keys"]:
            out[key] = (c[key].tolist(), c.image_size(key), c.stage(key) if c.kind == "boxes" else None)
        return out


def data_start(path):
    """Offset of the first byte after the header and its padding (the index, then the blocks)."""
    with open(path, "rb") as f:
        _, hlen = _HEAD.unpack(f.read(_HEAD.size))
    return _align(_HEAD.size + hlen)


@pytest.mark.parametrize("make", [box_cache, mask_cache], ids=["boxes", "masks"])
def test_every_flipped_byte_is_detected(tmp_path, make):
    path = make(str(tmp_path / "c.pcache"))
    good = open(path, "rb").read()
    reference = read_everything(path)
    start = data_start(path)
    outcomes = {"data": [0, 0], "header": [0, 0]}  # region: [detected, total]
    flipped = str(tmp_path / "flipped.pcache")
    for offset in range(len(good)):
        region = "data" if offset >= start else "header"
        bad = bytearray(good)
        bad[offset] ^= 0xFF
        open(flipped, "wb").write(bytes(bad))
        outcomes[region][1] += 1
        try:
            got = read_everything(flipped)
        except CacheError as e:
            assert flipped in str(e), str(e)  # the message names the file
            outcomes[region][0] += 1
            continue
        assert got != reference, f"byte {offset}: the flip changed nothing visible"  # a silent wrong result
    print(f"\n{make.__name__}: {len(good)} bytes; detected data {outcomes['data']}, header {outcomes['header']}")
    assert outcomes["data"][0] == outcomes["data"][1] > 100
    assert outcomes["header"][0] == outcomes["header"][1] > 100


def test_a_corrupt_block_names_file_block_and_remedy(tmp_path):
    path = box_cache(str(tmp_path / "c.pcache"))
    with ProposalCache(path) as c:
        lo = c._blob_base + int(c._block_offsets[1])
    bad = bytearray(open(path, "rb").read())
    bad[lo + 3] ^= 0x01  # one bit of block 1 (images 2..3)
    open(path, "wb").write(bytes(bad))
    with ProposalCache(path) as c:
        assert c["img0"].shape == (3, 4)  # block 0 is intact and still reads
        with pytest.raises(CacheCorruptError) as e:
            c["img2"]
    message = str(e.value)
    assert path in message and "block 1 of 3 (images 2..3" in message and "CRC32" in message
    assert "python tools/precompute_proposals.py --dataset tiny_set --method selective_search --preset single" in message
    report = verify_cache(path)
    assert not report["ok"] and report["bad_blocks"] == [1] and report["blocks"] == 3


def test_verify_whole_files_and_the_tool_flag(tmp_path, capsys):
    good = box_cache(str(tmp_path / "good.pcache"))
    report = verify_cache(good)
    assert report["ok"] and report["images"] == 5 and report["skipped"] == 1 and report["checks"] == "CRC32 + decode"
    tool = load_tool("precompute_proposals")
    assert tool.cli(["--verify", good, "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"OK {good}: boxes cache (format 2")
    data = bytearray(open(good, "rb").read())
    data[-1] ^= 0x10  # the last block
    bad = str(tmp_path / "bad.pcache")
    open(bad, "wb").write(bytes(data))
    assert tool.cli(["--verify", bad, "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"FAILED {bad}") and "1 of 3 blocks are damaged: [2]" in out
    open(bad, "wb").write(b"SOCOPC\x00\x01" + b"\xff" * 40)
    assert tool.cli(["--verify", bad, "--no-progress"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_format_1_files_still_read_with_a_warning(tmp_path, caplog):
    old = str(tmp_path / "format1_boxes.pcache")
    shutil.copy(os.path.join(DATA, "format1_boxes.pcache"), old)  # written by soco_d2 before checksums
    with caplog.at_level(logging.WARNING, logger="soco_d2.proposals"):
        with ProposalCache(old) as c:
            assert c.format_version == 1 and c.image_ids_sha256 is None
            assert c.keys() == IDS and c["img3"].tolist() == [[0, 0, 8, 7], [2, 3, 10, 20]]
            assert c.image_size("img4") == (24, 30) and c.stage("img1") == "ratio" and "broken" in c.skipped
    assert "format-1 cache without checksums" in caplog.text and old in caplog.text
    report = verify_cache(old)
    assert report["ok"] and report["checks"] == "decode only (format 1: no checksums)"
    check_cache(old, "boxes", IDS + ["broken"])  # no digest: checked through the index
    with pytest.raises(CacheError, match="1 of the 6 images"):
        check_cache(old, "boxes", IDS + ["new"])
    with ProposalCache(os.path.join(DATA, "format1_masks.pcache")) as c:
        assert c.kind == "masks" and c["img1"].shape == (12, 16) and int(c["img1"].max()) == 191 // 21


def test_header_records_kind_generator_and_image_id_digest(tmp_path):
    with ProposalCache(box_cache(str(tmp_path / "c.pcache"))) as c:
        assert c.format_version == 2 and c.kind == "boxes" and c.generator["preset"] == "single"
        assert c.image_ids_sha256 == image_ids_digest(IDS + ["broken"])  # stored and skipped images
        assert image_ids_digest(reversed(IDS + ["broken"])) == c.image_ids_sha256  # order does not matter


def test_check_cache_against_its_use(tmp_path, caplog):
    boxes = box_cache(str(tmp_path / "boxes.pcache"))
    masks = mask_cache(str(tmp_path / "masks.pcache"))
    dicts = [{"image_id": i, "file_name": f"/x/{i}.jpg"} for i in IDS + ["broken"]]
    check_cache(boxes, "boxes", dicts)  # the exact set: the digest matches
    check_cache(boxes, "boxes", IDS[:2])  # a subset: found through the index
    check_cache(boxes, None, IDS)
    with pytest.raises(CacheError) as e:
        check_cache(masks, "boxes", IDS[:3], key="PROPOSALS.BOX_CACHE", dataset_name="demo_images")
    assert str(e.value).startswith(f"PROPOSALS.BOX_CACHE {masks!r} holds Felzenszwalb label maps")
    assert "swapped" in str(e.value) and "--method selective_search" in str(e.value)
    with pytest.raises(CacheError, match="holds selective-search boxes, for SoCo's PROPOSALS.BOX_CACHE"):
        check_cache(boxes, "masks", IDS, key="PROPOSALS.MASK_CACHE")
    other = [f"other{i}" for i in range(4)]
    with pytest.raises(CacheError) as e:
        check_cache(boxes, "boxes", other, key="PROPOSALS.BOX_CACHE", dataset_name="folder:/data/b")
    message = str(e.value)
    assert "4 of the 4 images of folder:/data/b are not in it (e.g. 'other0'" in message
    assert "made from 'tiny_set' (6 images)" in message
    assert "--dataset folder:/data/b --method selective_search --output proposals/folder_data_b_ss.pcache" in message
    with pytest.raises(CacheError):  # whole_image may fill gaps, not replace a whole dataset
        check_cache(boxes, "boxes", other, allow_missing=True)
    with caplog.at_level(logging.WARNING, logger="soco_d2.proposals"):
        check_cache(boxes, "boxes", IDS + ["new"], allow_missing=True)
    assert "1 of the 6 images" in caplog.text
    with pytest.raises(CacheError, match="does not exist. Make it with: python tools/precompute_proposals.py "
                                         "--dataset demo_images --method felzenszwalb --output /no/such.pcache"):
        check_cache("/no/such.pcache", "masks", IDS, key="PROPOSALS.MASK_CACHE", dataset_name="demo_images")
