"""Semi-supervised COCO subsets (soco_d2.data.subsets) on a COCO-format json made
here: deterministic on every call and every rank, the stated size, nested
fractions, and id lists exported / imported in the formats papers publish."""
import json
import math
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from soco_d2 import get_pretrain_cfg
from config_utils import project_config_path
from soco_d2.data import subsets
from soco_d2.data.subsets import (
    export_id_list,
    load_id_list,
    register_coco_subset,
    register_coco_subset_from_ids,
    register_subsets_in,
    sample_image_ids,
    semi_supervised_schedule,
)

from dist_utils import run_in_gloo_processes

N_IMAGES = 1000  # 950 with a non-crowd annotation: 25 crowd-only, 25 without annotations
SOURCE = "subset_test_coco_train"


def _coco_json(path):
    images, anns = [], []
    for k in range(N_IMAGES):
        image_id = 9 + 37 * k  # sparse ids, like COCO's
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": 64, "width": 64})
        if k % 40 == 0:
            continue  # no annotation
        crowd_only = k % 40 == 1
        for j in range(1 + k % 3):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1 + (k + j) % 2,
                         "bbox": [4.0 * j, 4.0, 10.0, 10.0], "area": 100.0, "iscrowd": int(crowd_only),
                         "segmentation": [[4.0 * j, 4, 4.0 * j + 10, 4, 4.0 * j + 10, 14, 4.0 * j, 14]]})
    cats = [{"id": 1, "name": "a", "supercategory": "x"}, {"id": 2, "name": "b", "supercategory": "x"}]
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return path


def _register_source(json_path):
    if SOURCE not in DatasetCatalog.list():
        register_coco_instances(SOURCE, {}, json_path, os.path.dirname(json_path))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    _register_source(_coco_json(str(tmp_path_factory.mktemp("coco") / "instances_train.json")))
    pool = [d for d in DatasetCatalog.get(SOURCE) if subsets.has_non_crowd_annotation(d)]
    assert len(pool) == 950
    return SOURCE


def _ids(name):
    return [d["image_id"] for d in DatasetCatalog.get(name)]


def test_standard_coco_names_are_registered_with_coco_metadata():
    for percent in (1, 2, 5, 10):
        for seed in range(1, 6):
            name = f"coco_2017_train_{percent}pct_seed{seed}"
            assert name in DatasetCatalog.list()
            meta = MetadataCatalog.get(name)
            assert (meta.subset_of, meta.subset_percent, meta.subset_seed) == ("coco_2017_train", percent, seed)
            assert meta.evaluator_type == "coco" and len(meta.thing_classes) == 80 and not meta.get("json_file")


@pytest.mark.parametrize("percent", [1, 2, 5, 10, 0.5, 33.3])
def test_subset_has_the_stated_fraction_of_the_annotated_images(source, percent):
    name = register_coco_subset(percent, 1, source)
    ids = _ids(name)
    assert abs(len(ids) - 950 * percent / 100) <= 1 and len(ids) == max(1, math.floor(950 * percent / 100))
    assert len(set(ids)) == len(ids)
    records = DatasetCatalog.get(name)
    assert all(any(a.get("iscrowd", 0) == 0 for a in r["annotations"]) for r in records)  # what detectron2 trains on


def test_subset_is_the_same_on_every_call_and_differs_between_seeds(source):
    name = register_coco_subset(10, 3, source)
    assert register_coco_subset(10, 3, source) == name  # idempotent
    first = _ids(name)
    assert _ids(name) == first and sample_image_ids(list(reversed(first)), 100, 3) == sorted(first)
    assert len(set(first) & set(_ids(register_coco_subset(10, 4, source)))) < len(first) // 2


def test_fractions_are_nested_for_one_seed(source):
    sets = [set(_ids(register_coco_subset(p, 2, source))) for p in (1, 2, 5, 10, 50)]
    assert all(a < b for a, b in zip(sets, sets[1:]))


def _subset_in_this_rank(json_path, percent, seed):
    """Runs in each gloo process: other global random states, another PYTHONHASHSEED."""
    import random

    import numpy as np
    import torch
    from detectron2.utils import comm

    random.seed(comm.get_rank())
    np.random.seed(100 + comm.get_rank())
    torch.manual_seed(200 + comm.get_rank())
    _register_source(json_path)
    return _ids(register_coco_subset(percent, seed, SOURCE))


def test_subset_is_the_same_on_every_rank(source):
    json_path = MetadataCatalog.get(source).json_file
    here = _ids(register_coco_subset(5, 5, source))
    ranks = run_in_gloo_processes(_subset_in_this_rank, 2, json_path, 5, 5)
    assert ranks[0] == ranks[1] == here


def test_export_then_import_gives_the_same_subset(source, tmp_path):
    name = register_coco_subset(2, 1, source)
    path = export_id_list(name, str(tmp_path / "ids.txt"))
    lines = open(path).read().split()
    assert [int(x) for x in lines] == sorted(_ids(name))
    again = register_coco_subset_from_ids("subset_test_reimported", load_id_list(path), source)
    assert _ids(again) == _ids(name)
    assert DatasetCatalog.get(again) == DatasetCatalog.get(name)
    # by name, as a config would give it
    by_name = f"{source}@{path}"
    assert register_subsets_in([by_name]) == [by_name] and _ids(by_name) == _ids(name)


def test_imports_stac_cutler_style_coco_json_subsets(source, tmp_path):
    """instances_train2017.{fold}@{percent}.json / {N}perc_instances_train2017.json: a COCO json of the subset."""
    full = json.load(open(MetadataCatalog.get(source).json_file))
    keep = {image["id"] for image in full["images"][::7]}
    sub = {"images": [i for i in full["images"] if i["id"] in keep],
           "annotations": [a for a in full["annotations"] if a["image_id"] in keep], "categories": full["categories"]}
    path = tmp_path / "instances_train2017.1@10.json"
    path.write_text(json.dumps(sub))
    assert sorted(load_id_list(str(path))) == sorted(keep)
    name = register_coco_subset_from_ids("subset_test_stac", load_id_list(str(path)), source)
    assert set(_ids(name)) == keep


def test_imports_unbiased_teacher_index_files(source, tmp_path):
    """dataseed/COCO_supervision.txt: {percent: {seed: [positions in the annotated, id-sorted list]}}."""
    pool = sorted(d["image_id"] for d in DatasetCatalog.get(source) if subsets.has_non_crowd_annotation(d))
    positions = [3, 17, 400, 949, 512, 77, 5, 600, 820]  # floor(950 * 1%) = 9
    path = tmp_path / "COCO_supervision.txt"
    path.write_text(json.dumps({"1.0": {"0": positions, "1": positions[::-1]}, "0.5": {"0": [1, 2, 3, 4]}}))
    assert load_id_list(str(path), percent=1, seed=0, source=source) == [pool[i] for i in positions]
    with pytest.raises(ValueError, match="give percent and seed"):
        load_id_list(str(path), source=source)
    name = f"{source}@{path}#1.0/1"
    register_subsets_in([name])
    assert set(_ids(name)) == {pool[i] for i in positions}
    path.write_text(json.dumps({"1.0": {"0": [950]}}))
    with pytest.raises(ValueError, match="made for another list"):
        load_id_list(str(path), percent=1.0, seed=0, source=source)


def test_unknown_ids_fail_loudly(source):
    name = register_coco_subset_from_ids("subset_test_unknown", [9, 46, 123456789], source)
    with pytest.raises(ValueError, match="1 of the 3 image ids"):
        DatasetCatalog.get(name)


def test_any_percentage_and_seed_by_name(source):
    assert register_subsets_in([f"{source}_7.5pct_seed11", "demo_instances_val"]) == [f"{source}_7.5pct_seed11"]
    assert len(_ids(f"{source}_7.5pct_seed11")) == math.floor(950 * 0.075)
    with pytest.raises(ValueError, match="percent must be in"):
        register_coco_subset(0, 1, source)


@pytest.mark.parametrize("percent", [1, 10])
def test_semi_configs_use_the_scaled_schedule(percent):
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(project_config_path(f"transfer/coco_semi_{percent}pct_mask_rcnn_R_50_FPN.yaml"))
    assert tuple(cfg.DATASETS.TRAIN) == (f"coco_2017_train_{percent}pct_seed1",) and tuple(cfg.DATASETS.TEST) == ("coco_2017_val",)
    assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == semi_supervised_schedule(percent)
    # the rest is the COCO 1x protocol
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.WEIGHT_DECAY == 2.5e-5 and cfg.MODEL.ROI_BOX_HEAD.NUM_CONV == 4
    assert cfg.MODEL.RESNETS.NORM == "SyncBN" and cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.WEIGHTS == ""


def test_schedule_rule_matches_cutler_configs():
    # CutLER model_zoo/configs/COCO-Semisupervised: (MAX_ITER, STEPS) at 16 images per batch
    assert semi_supervised_schedule(1) == (3600, (2400, 3200)) == semi_supervised_schedule(2)
    assert semi_supervised_schedule(5) == (4500, (3000, 4000))
    assert semi_supervised_schedule(10) == (9000, (6000, 8000))
    assert semi_supervised_schedule(20) == (18000, (12000, 16000))


def test_export_command_writes_the_ids_of_a_subset_named_on_the_command_line(tmp_path, repo_root):
    import subprocess
    import sys

    out = tmp_path / "ids.txt"
    proc = subprocess.run([sys.executable, "-m", "soco_d2.data.subsets", "export", "demo_instances_train_50pct_seed2",
                           str(out)], capture_output=True, text=True, timeout=300, cwd=repo_root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    register_subsets_in(["demo_instances_train_50pct_seed2"])
    assert [int(x) for x in out.read_text().split()] == sorted(_ids("demo_instances_train_50pct_seed2"))
    assert "wrote 13 image ids" in proc.stdout  # floor(27 / 2)
