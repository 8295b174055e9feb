"""tools/probe_net.py on every kind of weights tools/convert_to_d2.py reads, on the demo
sets (memory demo_instances_train, queries demo_instances_val):

* one ResNet-50 in every layout (torchvision, MoCo, DenseCL, official SoCo, DetCon's
  Haiku tree, a converted .pkl) gives the same probe numbers, under different SEEDs
  (the random init would change them), and log.txt says which format was read;
* our pretraining checkpoint (online backbone + FPN) and its converted .pkl agree;
* a SoCo_C4 checkpoint: res5 comes from the region head, as the hook sees it;
* random init, the output folder policy, and bad input as one line (exit 2).
"""
import json
import os
import re

import numpy as np
import pytest
import soco_d2  # noqa: F401
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from config_utils import project_config_path
from probe_utils import make_colour_folders, one_thread
from soco_d2 import get_pretrain_cfg
from soco_d2.evaluation import build_probe_model, extractor_from_cfg, frozen, image_embeddings, load_probe_weights
from test_convert import _densecl_full, _moco, haiku_tree, randomize_, soco_official_checkpoint
from tool_utils import load_tool

DEMO_PROBE = [
    "MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN",
    "TEST.PROBE.REGION_MEMORY", "demo_instances_train", "TEST.PROBE.REGION_QUERIES", "demo_instances_val",
    "TEST.PROBE.MAX_MEMORY_IMAGES", 9, "TEST.PROBE.MAX_QUERY_IMAGES", 5,
    "TEST.PROBE.REGION_MIN_SIZE", 96, "TEST.PROBE.REGION_MAX_SIZE", 128,
    "TEST.PROBE.BATCH_SIZE", 8, "TEST.PROBE.NUM_WORKERS", 0,
]
RESNET = project_config_path("Base-Pretrain.yaml")  # a plain ResNet-50: res5 probed
SOCO_FPN = project_config_path("demo/soco_r50_fpn.yaml")
SOCO_C4 = project_config_path("demo/soco_r50_c4.yaml")
R18 = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.FPN.OUT_CHANNELS", 64]


def probe(config, weights, out, *opts, flags=()):
    argv = ["--config-file", config, "--weights", weights, "--no-progress", *flags,
            *[str(o) for o in DEMO_PROBE + list(opts)], "OUTPUT_DIR", str(out)]
    with one_thread():
        assert load_tool("probe_net").cli(argv) == 0
    with open(os.path.join(str(out), "probe_results.json")) as f:
        return json.load(f)


def log_of(out) -> str:
    with open(os.path.join(str(out), "log.txt")) as f:
        return f.read()


def numbers(record):
    return record["results"], record["per_class"]


@pytest.fixture(scope="module")
def tv_state():
    return randomize_(torchvision.models.resnet50(weights=None), seed=1).state_dict()


def test_one_resnet50_in_every_layout_gives_the_same_probe(tv_state, tmp_path):
    files = {"torchvision": str(tmp_path / "resnet50.pth"), "moco": str(tmp_path / "moco_v2_200ep.pth.tar"),
             "densecl": str(tmp_path / "densecl_r50_200ep.pth"), "soco": str(tmp_path / "ckpt_epoch_100.pth"),
             "detcon_haiku": str(tmp_path / "detcon_b_r50.npy")}
    torch.save(tv_state, files["torchvision"])
    torch.save(_moco(tv_state), files["moco"])
    torch.save(_densecl_full(tv_state), files["densecl"])
    torch.save(soco_official_checkpoint(tv_state), files["soco"])
    params, state = haiku_tree(tv_state)
    np.save(files["detcon_haiku"], {"online_params": params, "online_state": state}, allow_pickle=True)
    converted = str(tmp_path / "resnet50_d2.pkl")
    assert load_tool("convert_to_d2").cli([files["torchvision"], converted, "-q"]) == 0
    files["d2"] = converted

    records = {}
    for seed, (fmt, path) in enumerate(files.items()):
        out = tmp_path / f"probe_{fmt}"
        flags = ("--format", "detcon_haiku") if fmt == "detcon_haiku" else ()
        records[fmt] = probe(RESNET, path, out, "SEED", seed, flags=flags)
        assert f"probes: loaded {path} (format {fmt}, ResNet-50)" in log_of(out)
        assert records[fmt]["weights"] == path and records[fmt]["seed"] == seed
    reference = numbers(records["torchvision"])
    print(reference[0])
    for fmt, record in records.items():
        assert numbers(record) == reference, fmt
    assert set(reference[0]["demo_instances_val"]) == {"region_knn", "region_linear"}
    assert records["d2"]["protocol"]["name"] == "probe demo_instances_train->demo_instances_val"
    assert len({r["protocol"]["fingerprint"] for r in records.values()}) == 1  # repeats for collect_results


def _save_pretraining_checkpoint(config, opts, directory, seed):
    """Our pretraining checkpoint format (DetectionCheckpointer: model with online and target
    networks, heads, iteration), from the method's own meta-architecture."""
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(config)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    model = randomize_(build_model(cfg), seed=seed, prefixes=("backbone.", "box_head."))
    os.makedirs(str(directory), exist_ok=True)
    DetectionCheckpointer(model, save_dir=str(directory)).save("model_final", iteration=29)
    return model, cfg, os.path.join(str(directory), "model_final.pth")


def test_our_fpn_checkpoint_and_its_converted_pkl_agree(tmp_path):
    fpn = ["MODEL.FPN.NORM", "BN", "MODEL.ROI_BOX_HEAD.NORM", "BN", "MODEL.SSL.HEAD_NORM", "BN"]
    _, _, checkpoint = _save_pretraining_checkpoint(SOCO_FPN, R18 + fpn, tmp_path / "pretrain", seed=2)
    pkl = str(tmp_path / "model_final_d2.pkl")
    assert load_tool("convert_to_d2").cli([checkpoint, pkl, "--include", "all", "-q"]) == 0
    levels = ["TEST.PROBE.REGION_FEATURES", "['p2', 'p3', 'p4', 'p5']", *R18, *fpn]
    own = probe(SOCO_FPN, checkpoint, tmp_path / "own", *levels, "SEED", 1)
    zoo = probe(SOCO_FPN, pkl, tmp_path / "zoo", *levels, "SEED", 2)
    assert "(format soco_d2, ResNet-18): backbone 100 tensors, fpn 40 tensors" in log_of(tmp_path / "own")
    assert "(format d2, ResNet-18)" in log_of(tmp_path / "zoo")
    assert numbers(own) == numbers(zoo)
    print(own["results"])


def test_c4_checkpoint_probes_the_region_heads_res5_as_the_hook_does(tmp_path):
    folders = make_colour_folders(str(tmp_path / "colour"), {"memory": 2, "queries": 1})
    model, cfg, checkpoint = _save_pretraining_checkpoint(SOCO_C4, ["MODEL.RESNETS.NORM", "BN", "MODEL.SSL.HEAD_NORM", "BN"],
                                                          tmp_path / "pretrain", seed=3)
    image_level = ["TEST.PROBE.IMAGE_MEMORY", folders["memory"], "TEST.PROBE.IMAGE_QUERIES", folders["queries"],
                   "TEST.PROBE.IMAGE_RESIZE", 64, "TEST.PROBE.IMAGE_CROP", 64, "TEST.PROBE.REGION_FEATURES", "['res4']"]
    record = probe(SOCO_C4, checkpoint, tmp_path / "probe", *image_level)
    assert set(record["results"]) == {folders["queries"], "demo_instances_val"}
    assert "image_knn" in record["results"][folders["queries"]]

    # the tool's backbone: res5 filled from box_head.res5 (C4 pretrains res5 there)
    cfg.defrost()
    cfg.merge_from_list(DEMO_PROBE + image_level)
    probe_model = build_probe_model(cfg)
    load_probe_weights(probe_model, checkpoint, features=["res5", "res4"])
    source = model.state_dict()
    for name, tensor in probe_model.backbone.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            expected = source["box_head." + name] if name.startswith("res5.") else source["backbone." + name]
            assert torch.equal(tensor, expected), name
    # ... computes the res5 features the hook computes on the meta-architecture itself
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    with one_thread(), frozen(model), frozen(probe_model):
        hook_view = image_embeddings(extractor_from_cfg(cfg, model), [image], "res5")
        tool_view = image_embeddings(extractor_from_cfg(cfg, probe_model), [image], "res5")
    torch.testing.assert_close(hook_view, tool_view, rtol=1e-5, atol=1e-6)


def test_random_init_default_output_dir_and_overwrite(tmp_path, capsys):
    config = tmp_path / "probe.yaml"
    config.write_text(f'_BASE_: "{RESNET}"\nOUTPUT_DIR: "{tmp_path / "run"}"\n')
    argv = ["--config-file", str(config), "--weights", "", "--no-progress", *[str(o) for o in DEMO_PROBE + R18]]
    tool = load_tool("probe_net")
    with one_thread():
        assert tool.cli(argv) == 0
    out = tmp_path / "run" / "probe_random_init"
    record = json.loads((out / "probe_results.json").read_text())
    assert record["label"] == "random init" and record["weights"] == ""
    assert "| random init | demo_instances_val |" in capsys.readouterr().out
    assert (out / "probe_results.md").exists() and (out / "config.yaml").exists()
    with pytest.raises(SystemExit) as err:
        tool.cli(argv)  # earlier probe results: refused
    assert err.value.code == 2 and "holds earlier probe results" in capsys.readouterr().err
    with one_thread():
        assert tool.cli(["--overwrite"] + argv) == 0  # the same random init (SEED) gives the same numbers
    assert json.loads((out / "probe_results.json").read_text())["results"] == record["results"]

    # transfer_net.py --compare ... --probes: the probe columns join the AP rows
    from soco_d2.engine import write_results

    for name, ap in (("a", 12.5), ("b", 10.0)):
        write_results(str(tmp_path / name), {"demo_instances_val": {"bbox": {"AP": ap, "AP50": 2 * ap}}})
    capsys.readouterr()
    transfer = load_tool("transfer_net")
    assert transfer.cli(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--probes", str(out),
                         str(out / "probe_results.json"), "--labels", "A", "B"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "| APbb | APbb50 | region_knn top1 |" in lines[0]
    knn = record["results"]["demo_instances_val"]["region_knn"]["top1"]
    assert lines[2].startswith(f"| A | demo_instances_val | 12.5 | 25.0 | {knn:.1f} |")
    assert lines[4].startswith("| Δ (A − B) |  | +2.5 | +5.0 | +0.0 |")
    with pytest.raises(SystemExit) as err:
        transfer.cli(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--probes", str(out)])
    assert err.value.code == 2 and "1 probe results for 2 results files" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["not weights", "another depth", "no fpn", "training run", "bad dataset",
                                  "unsafe pickle"])
def test_bad_input_is_one_line_and_exit_status_2(case, tv_state, tmp_path, capsys):
    weights, config, opts = str(tmp_path / "resnet50.pth"), RESNET, []
    torch.save(tv_state, weights)
    expected = {
        "not weights": "cannot", "another depth": "not the ResNet-18", "no fpn": "it has no FPN",
        "training run": "holds a training run", "bad dataset": "TEST.PROBE: ", "unsafe pickle": "",
    }[case]
    out = tmp_path / "out"
    if case == "not weights":
        weights = str(tmp_path / "notes.pth")
        open(weights, "w").write("these are not weights")
    elif case == "another depth":
        opts = R18
    elif case == "no fpn":
        config, opts = SOCO_FPN, ["TEST.PROBE.REGION_FEATURES", "['p2', 'p3', 'p4', 'p5']", "MODEL.FPN.NORM", "BN"]
    elif case == "training run":
        out.mkdir()
        (out / "metrics.json").write_text("{}\n")
    elif case == "bad dataset":
        opts = ["TEST.PROBE.REGION_QUERIES", "no_such_dataset"]
    elif case == "unsafe pickle":
        weights = str(tmp_path / "evil.pkl")
        with open(weights, "wb") as f:
            f.write(b"cos\nsystem\n(S'echo hacked'\ntR.")
        expected = "refusing to load os.system"
    argv = ["--config-file", config, "--weights", weights, "--no-progress", *[str(o) for o in DEMO_PROBE + opts],
            "OUTPUT_DIR", str(out)]
    with pytest.raises(SystemExit) as err, one_thread():
        load_tool("probe_net").cli(argv)
    stderr = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2, stderr
    assert stderr[-1].startswith("error: ") and expected in stderr[-1], stderr[-1]
    # no traceback (logging's own "--- Logging error ---" reports come from handlers that earlier
    # in-process tool runs attached to a capture stream pytest has closed since)
    text = re.sub(r"--- Logging error ---.*?\nArguments: [^\n]*\n", "", "\n".join(stderr) + "\n", flags=re.S)
    assert "Traceback" not in text, text
    assert not (out / "probe_results.json").exists()
