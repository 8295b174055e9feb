"""tools/collect_results.py and the grouping in soco_d2.engine.results, on the
result files of real (short) demo transfer runs: several seeds of one
protocol, one results.json in the old format and
a probe_results.json; mean and sample std checked by hand."""
import csv
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from soco_d2.data.subsets import register_coco_subset
from soco_d2.engine import TransferTrainer
from soco_d2.errors import InputError
from soco_d2.engine.collect import collect_results, find_result_files
from soco_d2.engine.results import protocol_of, write_results

from test_transfer import TINY, transfer_cfg

DEMO_CONFIG = "transfer/demo_mask_rcnn_R_50_FPN.yaml"
SEEDS = (1, 2, 3)
VAL = "demo_instances_val_34pct_seed1"
# the demo protocol on the TINY model, one iteration, every detection kept (so AP varies with the seed)
SHORT = ["SOLVER.MAX_ITER", 1, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "TEST.DETECTIONS_PER_IMAGE", 100,
         "MODEL.RPN.POST_NMS_TOPK_TEST", 100,
         "MODEL.ROI_BOX_HEAD.CONV_DIM", 64, "MODEL.ROI_MASK_HEAD.CONV_DIM", 64, "MODEL.FPN.OUT_CHANNELS", 64]


def _demo_run(out_dir, seed, *extra):
    val = register_coco_subset(34, 1, "demo_instances_val")  # 3 of the 9 val images keep the runs short
    assert val == VAL
    cfg = transfer_cfg(DEMO_CONFIG, out_dir, *SHORT, "SEED", seed, "DATASETS.TEST", (val,), *extra)
    trainer = TransferTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    for name in os.listdir(out_dir):  # keep the result files only (no checkpoints)
        if name.endswith(".pth"):
            os.remove(os.path.join(out_dir, name))
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for seed in SEEDS:
        _demo_run(root / f"demo_seed{seed}", seed)
    old = root / "old_format"
    old.mkdir()
    record = json.load(open(root / "demo_seed1" / "results.json"))
    json.dump({k: record[k] for k in ("weights", "label", "iteration", "results")}, open(old / "results.json", "w"))
    probe = {"weights": "", "iteration": 30, "results": {"demo_images": {
        "image_knn": {"top1": 40.0, "top5": 90.0, "mean_class_acc": 38.5},
        "region_linear": {"top1": 55.5, "top5": 95.0, "mean_class_acc": 50.0}}}}
    json.dump(probe, open(root / "demo_seed1" / "probe_results.json", "w"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _ap(path, task="bbox", metric="AP"):
    return json.load(open(path))["results"][VAL][task][metric]


def test_results_json_records_seed_and_protocol(runs):
    records = [json.load(open(runs / f"demo_seed{s}" / "results.json")) for s in SEEDS]
    assert [r["seed"] for r in records] == list(SEEDS) and all(r["data_seed"] is None for r in records)
    fingerprints = {r["protocol"]["fingerprint"] for r in records}
    assert len(fingerprints) == 1 and records[0]["protocol"]["name"] == "demo_instances_train 1it"


def test_protocol_ignores_seed_weights_and_subset_fold():
    cfg_a = transfer_cfg(DEMO_CONFIG, "a", "SEED", 1, "DATASETS.TRAIN", ("coco_2017_train_1pct_seed1",))
    cfg_b = transfer_cfg(DEMO_CONFIG, "b", "SEED", 2, "DATASETS.TRAIN", ("coco_2017_train_1pct_seed4",),
                         "MODEL.WEIGHTS", "x.pkl")
    cfg_c = transfer_cfg(DEMO_CONFIG, "c", "SEED", 1, "DATASETS.TRAIN", ("coco_2017_train_10pct_seed1",))
    a, b, c = protocol_of(cfg_a), protocol_of(cfg_b), protocol_of(cfg_c)
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]
    assert a["name"] == "coco_2017_train_1pct_seed* 2it"


def test_seeds_are_averaged_with_the_sample_std(runs):
    groups = collect_results([str(runs)])
    demo = [g for g in groups if g.dataset == VAL]
    assert sorted(len(g.runs) for g in demo) == [1, 3]  # 3 seeds; the old-format file
    repeated = next(g for g in demo if len(g.runs) == 3)
    assert sorted(repeated.seeds) == ["1", "2", "3"]
    for task, metric in (("bbox", "AP"), ("segm", "AP"), ("bbox", "AP50")):
        values = [_ap(runs / f"demo_seed{s}" / "results.json", task, metric) for s in SEEDS]
        mean = (values[0] + values[1] + values[2]) / 3
        std = math.sqrt(((values[0] - mean) ** 2 + (values[1] - mean) ** 2 + (values[2] - mean) ** 2) / 2)
        got_mean, got_std, n = repeated.mean_std(task, metric)
        assert n == 3 and got_mean == pytest.approx(mean, abs=1e-12) and got_std == pytest.approx(std, abs=1e-12)
    assert len(set(values)) > 1, "the seeds should give different AP"


def test_collect_results_tool_writes_table_csv_and_plot(runs, tmp_path, repo_root):
    out = tmp_path / "collected"
    proc = subprocess.run([sys.executable, os.path.join(repo_root, "tools", "collect_results.py"), str(runs),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "results.md").read_text()
    assert table.strip() in proc.stdout
    lines = table.splitlines()
    assert lines[0].startswith("| Weights | Protocol | Dataset | Runs | Seeds | APbb | APbb50 |")
    assert "image_knn top1" in lines[0] and "region_linear mean_class_acc" in lines[0]
    assert "AP-disc" not in lines[0]  # per-category AP stays in results.json
    values = [_ap(runs / f"demo_seed{s}" / "results.json") for s in SEEDS]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    row = next(line for line in lines if "| 3 |" in line)
    assert f"| {mean:.1f} ± {std:.1f} |" in row and "| 1,2,3 |" in row and row.startswith("| random init | demo_instances_train 1it |")
    probe_row = next(line for line in lines if "demo_images" in line)
    assert "| 40.0 |" in probe_row and "| 50.0 |" in probe_row

    rows = list(csv.DictReader(open(out / "results.csv")))
    three = next(r for r in rows if r["runs"] == "3")
    assert float(three["APbb"]) == pytest.approx(mean, abs=1e-12) and float(three["APbb_std"]) == pytest.approx(std, abs=1e-12)
    assert three["seeds"] == "1 2 3" and three["APbb50_std"] != ""
    assert next(r for r in rows if r["dataset"] == "demo_images")["image_knn top1"] == "40.0"
    png = (out / "ap_by_method.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_old_results_files_are_read_and_listed_alone(runs):
    files = find_result_files([str(runs / "old_format"), str(runs / "demo_seed2" / "results.json")])
    assert [os.path.basename(os.path.dirname(f)) for f in files] == ["old_format", "demo_seed2"]
    groups = collect_results([str(runs / "old_format"), str(runs / "old_format" / "results.json")])
    assert len(groups) == 1 and groups[0].protocol == "–" and groups[0].seeds == ["?"]
    empty = runs / "empty"
    empty.mkdir(exist_ok=True)
    with pytest.raises(InputError, match="no results.json or probe_results.json"):
        find_result_files([str(empty)])


def test_negative_ap_sentinels_are_stored_as_missing(tmp_path):
    write_results(str(tmp_path), {"lvis_v1_val": {"bbox": {"AP": 12.0, "APl": -100.0, "APr": float("nan")}}})
    stored = json.load(open(tmp_path / "results.json"))["results"]["lvis_v1_val"]["bbox"]
    assert stored == {"AP": 12.0, "APl": None, "APr": None}
