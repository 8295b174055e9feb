"""Checkpoint conversion (soco_d2.checkpoint, tools/convert_to_d2.py).

Converted checkpoints are loaded into real detectron2 models through
DetectionCheckpointer; "zero missing keys" is read from the checkpointer's
own IncompatibleKeys, and every loaded tensor is compared with its source
(the target models are filled with NaN first, and the sources get random BN
statistics, so a tensor that did not load -- or that FrozenBN silently filled
with 0 / 1 -- fails the comparison).
"""
import argparse
import copy
import glob
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, Res5ROIHeads
from PIL import Image

from soco_d2 import get_pretrain_cfg
from soco_d2.checkpoint import (
    ConversionError,
    convert_checkpoint,
    load_with_report,
    missing_by_group,
    save_d2,
    save_torchvision,
)
from config_utils import model_zoo_config_path, project_config_path
from soco_d2.engine.transfer import prepare_transfer_cfg
from tool_utils import load_tool

STOCK_MASK_RCNN = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
SOCO_FINETUNE = "transfer/coco_mask_rcnn_R_50_FPN_1x.yaml"
VOC_C4 = "transfer/voc_faster_rcnn_R_50_C4_24k.yaml"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


# ------------------------------------------------------------------ helpers
def randomize_(module: torch.nn.Module, seed: int, prefixes=("",)) -> torch.nn.Module:
    """Random weights and BN statistics of the tensors under ``prefixes`` (default BN
    stats are 0/1, which FrozenBN would fake)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point() or not name.startswith(prefixes):
                continue
            if name.endswith("running_var") or (tensor.ndim == 1 and name.endswith("weight")):
                tensor.uniform_(0.5, 1.5, generator=gen)
            elif tensor.ndim == 1:  # biases, running means
                tensor.normal_(0.0, 0.1, generator=gen)
            else:  # conv / linear weights, fan-in scaled
                tensor.normal_(0.0, (1.0 / tensor[0].numel()) ** 0.5, generator=gen)
    return module


def cfg_from(path, **overrides):
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return prepare_transfer_cfg(cfg, world_size=1, cuda=False, log=False)


def nan_fill_(model):
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
    return model


def assert_loaded(model, pkl, groups, expected: dict):
    """Load ``pkl`` into ``model`` (NaN-filled); zero missing keys in ``groups``; tensors equal ``expected``."""
    nan_fill_(model)
    incompatible = load_with_report(model, pkl)
    missing = missing_by_group(incompatible, model)
    for group in groups:
        assert missing[group] == [], (group, missing[group][:5])
    state = model.state_dict()
    assert expected, "nothing to compare"
    for key, value in expected.items():
        assert key in state, key
        assert torch.equal(state[key], torch.as_tensor(np.asarray(value))), key
    return incompatible


def expected_backbone(state, model_prefix="backbone.bottom_up."):
    """model key -> source tensor, for the torchvision ResNet names in ``state`` (docs/detectron2.md, Names)."""
    out = {}
    for name, value in state.items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        parts = name.split(".")
        if parts[0] == "conv1":
            d2 = "stem.conv1." + parts[1]
        elif parts[0] == "bn1":
            d2 = "stem.conv1.norm." + parts[1]
        else:
            stage = f"res{int(parts[0][-1]) + 1}.{parts[1]}"
            layer = parts[2]
            if layer == "downsample":
                d2 = f"{stage}.shortcut." + ("norm." if parts[3] == "1" else "") + parts[4]
            elif layer.startswith("bn"):
                d2 = f"{stage}.conv{layer[2]}.norm.{parts[3]}"
            else:
                d2 = f"{stage}.{layer}.{parts[3]}"
        out[model_prefix + d2] = value
    return out


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tv_state():
    """A torchvision ResNet-50 state dict with random weights and BN statistics."""
    return randomize_(torchvision.models.resnet50(weights=None), seed=1).state_dict()


@pytest.fixture(scope="module")
def tv_file(tv_state, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tv") / "resnet50.pth")
    torch.save(tv_state, path)
    return path


@pytest.fixture(scope="module")
def tv_d2(tv_file):
    """The torchvision checkpoint converted: the reference every other layout must reproduce."""
    return convert_checkpoint(tv_file)


@pytest.fixture(scope="module")
def stock_model():
    return build_model(cfg_from(model_zoo_config_path(STOCK_MASK_RCNN)))


@pytest.fixture(scope="module")
def finetune_model():
    return build_model(cfg_from(project_config_path(SOCO_FINETUNE)))


# ------------------------------------------------------------------ torchvision
def test_torchvision_loads_into_stock_mask_rcnn(tv_d2, tv_state, stock_model, tmp_path):
    assert tv_d2.format == "torchvision" and tv_d2.depth == 50
    assert tv_d2.group_counts() == {"backbone": 265} and not tv_d2.unmatched
    reasons = {reason for _, reason in tv_d2.dropped}
    assert len(tv_d2.dropped) == 53 + 2 and any("fc" in r for r in reasons)
    pkl = save_d2(tv_d2, str(tmp_path / "tv.pkl"))
    with open(pkl, "rb") as f:
        data = pickle.load(f)
    assert data["matching_heuristics"] is True and data["__author__"].startswith("soco_d2")
    assert all(isinstance(v, np.ndarray) for v in data["model"].values())
    incompatible = assert_loaded(stock_model, pkl, ["backbone"], expected_backbone(tv_state))
    assert not incompatible.unexpected_keys
    bottom_up = [k for k in stock_model.backbone.bottom_up.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(bottom_up) == 265  # every tensor of the backbone was compared


@pytest.mark.parametrize("norm", ["SyncBN", "FrozenBN"])
def test_torchvision_and_detectron2_compute_the_same_features(tv_state, tv_d2, tmp_path, norm):
    """res5 of the transfer config's detectron2 backbone == torchvision's layer4, same image."""
    cfg = cfg_from(project_config_path(SOCO_FINETUNE), **{"MODEL.RESNETS.NORM": norm, "MODEL.WEIGHTS": "x.pkl"})
    assert cfg.INPUT.FORMAT == "RGB" and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    assert cfg.MODEL.RESNETS.NORM == ("BN" if norm == "SyncBN" else "FrozenBN")  # one process: SyncBN -> BN
    model = build_model(cfg).eval()
    pkl = save_d2(tv_d2, str(tmp_path / "tv.pkl"))
    assert missing_by_group(load_with_report(model, pkl), model)["backbone"] == []

    import skimage.data

    photo = Image.fromarray(skimage.data.astronaut()).resize((224, 224), Image.BILINEAR)
    image = convert_PIL_to_numpy(photo, cfg.INPUT.FORMAT)  # what detectron2's mapper feeds
    with torch.no_grad():
        images = model.preprocess_image([{"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))}])
        ours = model.backbone.bottom_up(images.tensor)["res5"]

        tv_model = torchvision.models.resnet50(weights=None)
        tv_model.load_state_dict(tv_state)
        tv_model.eval()
        x = (np.asarray(photo, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD  # torchvision's Normalize
        x = torch.from_numpy(x.transpose(2, 0, 1)).unsqueeze(0)
        theirs = torch.nn.Sequential(*list(tv_model.children())[:-2])(x)
    assert ours.shape == theirs.shape == (1, 2048, 7, 7)
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()


def test_export_to_torchvision_round_trip(tv_d2, tv_state, tmp_path):
    pkl = save_d2(tv_d2, str(tmp_path / "tv.pkl"))
    again = convert_checkpoint(pkl)  # model-zoo names in, detected as "d2"
    assert again.format == "d2" and len(again.model) == 265
    out = save_torchvision(again, str(tmp_path / "back.pth"))
    exported = torch.load(out, weights_only=True)
    model = torchvision.models.resnet50(weights=None)
    result = model.load_state_dict(exported, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    for key, value in tv_state.items():
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(exported[key], value), key


# ------------------------------------------------------------------ our own checkpoints
class ContractSSLModel(torch.nn.Module):
    """Stands in for a soco_d2 pretraining meta-arch: the state-dict naming contract
    (online backbone, SoCo box head, target copies, MLP heads, a queue)."""

    def __init__(self, cfg, c4=False):
        super().__init__()
        self.backbone = build_backbone(cfg)
        if c4:
            res5, _ = Res5ROIHeads._build_res5_block(cfg)
            self.box_head = torch.nn.Module()
            self.box_head.res5 = res5
            dim = 2048
        else:
            self.box_head = FastRCNNConvFCHead(cfg, ShapeSpec(channels=256, height=7, width=7))
            dim = 1024
        self.projector = torch.nn.Sequential(torch.nn.Linear(dim, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                                             torch.nn.Linear(32, 16))
        self.predictor = torch.nn.Sequential(torch.nn.Linear(16, 16))
        self.target = torch.nn.ModuleDict({
            "backbone": copy.deepcopy(self.backbone), "box_head": copy.deepcopy(self.box_head),
            "projector": copy.deepcopy(self.projector),
        })
        self.register_buffer("queue", torch.randn(16, 8))


def contract_cfg(c4=False):
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(project_config_path("Base-RCNN-C4.yaml" if c4 else "Base-RCNN-FPN.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.NORM = "BN"
    if not c4:
        cfg.MODEL.FPN.NORM = "BN"
        cfg.MODEL.ROI_BOX_HEAD.NUM_CONV, cfg.MODEL.ROI_BOX_HEAD.NUM_FC, cfg.MODEL.ROI_BOX_HEAD.NORM = 4, 1, "BN"
    return cfg


def save_checkpoint(model, directory) -> str:
    DetectionCheckpointer(model, save_dir=str(directory)).save("model_final", iteration=7)
    return os.path.join(str(directory), "model_final.pth")


def test_own_fpn_checkpoint_with_fpn_and_box_head(finetune_model, tmp_path):
    source = randomize_(ContractSSLModel(contract_cfg()), seed=2, prefixes=("backbone.", "box_head."))
    path = save_checkpoint(source, tmp_path)
    result = convert_checkpoint(path, include="backbone,fpn,box_head", strict=True)
    assert result.format == "soco_d2" and result.depth == 50 and not result.unmatched
    assert result.group_counts() == {"backbone": 265, "fpn": 8 * 5, "box_head": 4 * 5 + 2}
    reasons = " ".join(reason for _, reason in result.dropped)
    for expected in ("target", "projection", "queue", "training state"):
        assert expected in reasons
    pkl = save_d2(result, str(tmp_path / "model_final_d2.pkl"))

    src = source.state_dict()
    expected = {k: v for k, v in src.items() if k.startswith("backbone.") and not k.endswith("num_batches_tracked")}
    expected.update({"roi_heads." + k: v for k, v in src.items()
                     if k.startswith("box_head.") and not k.endswith("num_batches_tracked")})
    assert_loaded(finetune_model, pkl, ["backbone", "fpn", "box_head"], expected)

    assert convert_checkpoint(path, include="all").include == ("backbone", "fpn", "box_head")
    backbone_only = convert_checkpoint(path)  # default --include backbone
    assert backbone_only.group_counts() == {"backbone": 265}
    assert any("not included" in reason for _, reason in backbone_only.dropped)


def test_own_c4_checkpoint_res5_from_region_head(stock_model, tmp_path):
    cfg = contract_cfg(c4=True)
    source = randomize_(ContractSSLModel(cfg, c4=True), seed=3, prefixes=("backbone.", "box_head."))
    assert not any(k.startswith("backbone.res5") for k in source.state_dict())  # res5 lives in the region head
    result = convert_checkpoint(save_checkpoint(source, tmp_path), strict=True)
    assert result.group_counts() == {"backbone": 265}
    pkl = save_d2(result, str(tmp_path / "c4.pkl"))
    src = source.state_dict()

    def source_of(rest):
        return src.get("backbone." + rest, src.get("box_head." + rest))

    # into the VOC C4 detector: res5 -> roi_heads.res5 (its extra norm is new, not pretrained)
    voc = build_model(cfg_from(project_config_path(VOC_C4)))
    expected = {}
    for key in voc.state_dict():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith("backbone."):
            expected[key] = source_of(key[len("backbone."):])
        elif key.startswith("roi_heads.res5.") and not key.startswith("roi_heads.res5.norm."):
            expected[key] = source_of(key[len("roi_heads."):])
    incompatible = assert_loaded(voc, pkl, ["backbone"], expected)
    assert {k for k in incompatible.missing_keys if k.startswith("roi_heads.res5")} == {
        f"roi_heads.res5.norm.{p}" for p in ("weight", "bias", "running_mean", "running_var")}
    # and into the stock FPN detector: res5 -> backbone.bottom_up.res5
    expected = {k: source_of(k[len("backbone.bottom_up."):]) for k in stock_model.state_dict()
                if k.startswith("backbone.bottom_up.") and not k.endswith("num_batches_tracked")}
    assert_loaded(stock_model, pkl, ["backbone"], expected)


def demo_pretrain_configs():
    return sorted(glob.glob(project_config_path("demo/*.yaml")))


@pytest.mark.parametrize("config", demo_pretrain_configs(), ids=os.path.basename)
def test_every_pretraining_method_converts_into_stock_mask_rcnn(config, stock_model, tmp_path):
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(config)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    source = randomize_(build_model(cfg), seed=4, prefixes=("backbone.", "box_head."))  # the online encoder
    result = convert_checkpoint(save_checkpoint(source, tmp_path))
    assert result.format == "soco_d2" and result.group_counts()["backbone"] == 265
    src = source.state_dict()
    expected = {}
    for key in stock_model.backbone.bottom_up.state_dict():
        if key.endswith("num_batches_tracked"):
            continue
        candidates = [f"backbone.bottom_up.{key}", f"backbone.{key}", f"box_head.{key}"]
        expected["backbone.bottom_up." + key] = next(src[c] for c in candidates if c in src)
    assert_loaded(stock_model, save_d2(result, str(tmp_path / "d2.pkl")), ["backbone"], expected)


# ------------------------------------------------------------------ official layouts
def soco_official_checkpoint(tv_state, seed=5):
    """The official SoCo FPN training checkpoint layout (docs/methods/soco.md, Conversion and fine-tuning), random values."""
    gen = torch.Generator().manual_seed(seed)

    def bn(prefix, c, out):
        out[f"{prefix}.weight"] = torch.rand(c, generator=gen) + 0.5
        out[f"{prefix}.bias"] = torch.randn(c, generator=gen) * 0.1
        out[f"{prefix}.running_mean"] = torch.randn(c, generator=gen) * 0.1
        out[f"{prefix}.running_var"] = torch.rand(c, generator=gen) + 0.5
        out[f"{prefix}.num_batches_tracked"] = torch.tensor(100)

    online = {f"encoder.{k}": v for k, v in tv_state.items() if not k.startswith("fc.")}
    for i, channels in enumerate((256, 512, 1024, 2048)):
        online[f"neck.lateral_convs.{i}.conv.weight"] = torch.randn(256, channels, 1, 1, generator=gen)
        bn(f"neck.lateral_convs.{i}.bn", 256, online)
        online[f"neck.fpn_convs.{i}.conv.weight"] = torch.randn(256, 256, 3, 3, generator=gen)
        bn(f"neck.fpn_convs.{i}.bn", 256, online)
    for k in range(1, 5):
        online[f"head.conv{k}.weight"] = torch.randn(256, 256, 3, 3, generator=gen)
        bn(f"head.bn{k}", 256, online)
    online["head.fc1.weight"] = torch.randn(1024, 256 * 7 * 7, generator=gen)
    online["head.fc1.bias"] = torch.randn(1024, generator=gen)
    online["projector.linear1.weight"] = torch.randn(64, 1024, generator=gen)
    online["predictor.linear1.weight"] = torch.randn(64, 64, generator=gen)
    model = dict(online)
    for key, value in online.items():
        part, rest = key.split(".", 1)
        if part in ("encoder", "neck", "head", "projector"):
            model[f"{part}_k.{rest}"] = value + 1
    return {
        "model": {"module." + k: v for k, v in model.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1.0, "params": [0, 1]}]},
        "scheduler": {"last_epoch": 100},
        "epoch": 100,
        "opt": argparse.Namespace(arch="resnet50", model="SoCo_FPN", batch_size=128),
        "amp": {"loss_scaler0": {"loss_scale": 65536.0, "unskipped": 0}},
    }


def test_official_soco_fpn_checkpoint(tv_state, tv_d2, finetune_model, tmp_path):
    checkpoint = soco_official_checkpoint(tv_state)
    path = str(tmp_path / "ckpt_epoch_100.pth")
    torch.save(checkpoint, path)  # holds an argparse.Namespace: weights_only with Namespace allowed
    result = convert_checkpoint(path, include=("backbone", "fpn", "box_head"), strict=True)
    assert result.format == "soco" and not result.unmatched
    for name, value in tv_d2.model.items():
        assert np.array_equal(result.model[name], value), name
    reasons = " ".join(reason for _, reason in result.dropped)
    assert "momentum (key) network" in reasons and "projection" in reasons
    model = checkpoint["model"]
    expected = {}
    for i in range(4):
        for kind, d2 in (("lateral_convs", "fpn_lateral"), ("fpn_convs", "fpn_output")):
            expected[f"backbone.{d2}{i + 2}.weight"] = model[f"module.neck.{kind}.{i}.conv.weight"]
            for p in ("weight", "bias", "running_mean", "running_var"):
                expected[f"backbone.{d2}{i + 2}.norm.{p}"] = model[f"module.neck.{kind}.{i}.bn.{p}"]
    for k in range(1, 5):
        expected[f"roi_heads.box_head.conv{k}.weight"] = model[f"module.head.conv{k}.weight"]
        for p in ("weight", "bias", "running_mean", "running_var"):
            expected[f"roi_heads.box_head.conv{k}.norm.{p}"] = model[f"module.head.bn{k}.{p}"]
    expected["roi_heads.box_head.fc1.weight"] = model["module.head.fc1.weight"]
    expected["roi_heads.box_head.fc1.bias"] = model["module.head.fc1.bias"]
    expected.update(expected_backbone(tv_state))
    assert_loaded(finetune_model, save_d2(result, str(tmp_path / "soco.pkl")), ["backbone", "fpn", "box_head"], expected)


def _densecl_step1(tv):
    return {"state_dict": dict(tv), "author": "DenseCL"}


def _densecl_full(tv):
    state = {f"backbone.{k}": v for k, v in tv.items() if not k.startswith("fc.")}
    state.update({f"encoder_q.0.{k}": v for k, v in tv.items() if not k.startswith("fc.")})
    state.update({f"encoder_k.0.{k}": v + 1 for k, v in tv.items() if not k.startswith("fc.")})
    state.update({"encoder_q.1.mlp.0.weight": torch.ones(8, 2048), "encoder_q.1.mlp2.0.weight": torch.ones(8, 2048),
                  "queue": torch.ones(128, 16), "queue_ptr": torch.zeros(1, dtype=torch.long),
                  "queue2": torch.ones(128, 16), "queue2_ptr": torch.zeros(1, dtype=torch.long)})
    return {"meta": {"epoch": 200, "iter": 1000, "mmcv_version": "0.4.3", "config": "model = dict(type='DenseCL')"},
            "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}


def _moco(tv):
    state = {f"module.encoder_q.{k}": v for k, v in tv.items() if not k.startswith("fc.")}
    state.update({f"module.encoder_k.{k}": v + 1 for k, v in tv.items() if not k.startswith("fc.")})
    state.update({"module.encoder_q.fc.0.weight": torch.ones(2048, 2048), "module.encoder_q.fc.0.bias": torch.ones(2048),
                  "module.encoder_q.fc.2.weight": torch.ones(128, 2048), "module.encoder_q.fc.2.bias": torch.ones(128),
                  "module.queue": torch.ones(128, 65), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    return {"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}


@pytest.mark.parametrize(
    "builder, fmt", [(_densecl_step1, "densecl"), (_densecl_full, "densecl"), (_moco, "moco")],
    ids=["densecl-extracted", "densecl-training", "moco"],
)
def test_official_layouts_reproduce_the_torchvision_conversion(builder, fmt, tv_state, tv_d2, tmp_path):
    path = str(tmp_path / "ckpt.pth")
    torch.save(builder(tv_state), path)
    result = convert_checkpoint(path, strict=True)
    assert result.format == fmt and not result.unmatched
    assert list(result.model) == list(tv_d2.model)
    for name, value in tv_d2.model.items():
        assert np.array_equal(result.model[name], value), name


def haiku_tree(tv_state, offset=0.0):
    """DetCon's Haiku parameter / state layout for a torchvision-named ResNet-50."""
    params, state = {}, {}
    root = "res_net50/~/"

    def conv(module, tv):
        params[root + module] = {"w": tv_state[tv].numpy().transpose(2, 3, 1, 0) + offset}  # OIHW -> HWIO

    def bn(module, tv):
        def vec(name):
            return tv_state[f"{tv}.{name}"].numpy().reshape(1, 1, 1, -1) + offset
        params[root + module] = {"scale": vec("weight"), "offset": vec("bias")}
        for stat, name in (("mean", "running_mean"), ("var", "running_var")):
            state[f"{root}{module}/~/{stat}_ema"] = {"average": vec(name), "hidden": vec(name) * 0.5,
                                                    "counter": np.array(31278, dtype=np.int32)}

    conv("initial_conv", "conv1.weight")
    bn("initial_batchnorm", "bn1")
    for g, blocks in enumerate((3, 4, 6, 3)):
        for b in range(blocks):
            prefix = f"block_group_{g}/~/block_{b}/~/"
            for i in range(3):
                conv(prefix + f"conv_{i}", f"layer{g + 1}.{b}.conv{i + 1}.weight")
                bn(prefix + f"batchnorm_{i}", f"layer{g + 1}.{b}.bn{i + 1}")
            if b == 0:
                conv(prefix + "shortcut_conv", f"layer{g + 1}.0.downsample.0.weight")
                bn(prefix + "shortcut_batchnorm", f"layer{g + 1}.0.downsample.1")
    params["projector/~/linear"] = {"w": np.ones((2048, 64), np.float32), "b": np.zeros(64, np.float32)}
    params["predictor/~/linear"] = {"w": np.ones((64, 64), np.float32)}
    params["classifier"] = {"w": np.ones((2048, 1000), np.float32), "b": np.zeros(1000, np.float32)}
    return params, state


def test_detcon_haiku_tree(tv_state, tv_d2, tmp_path, caplog):
    online_params, online_state = haiku_tree(tv_state)
    target_params, target_state = haiku_tree(tv_state, offset=1.0)
    tree = {"online_params": online_params, "online_state": online_state,
            "target_params": target_params, "target_state": target_state}
    path = str(tmp_path / "detcon_b_r50.npy")
    np.save(path, tree, allow_pickle=True)
    with caplog.at_level("WARNING"):
        result = convert_checkpoint(path, strict=True)  # auto-detected: warns that it is a pickle
    assert result.format == "detcon_haiku" and not result.unmatched
    assert any("allow_pickle" in r.getMessage() for r in caplog.records)
    for name, value in tv_d2.model.items():
        assert np.array_equal(result.model[name], value), name
    reasons = " ".join(reason for _, reason in result.dropped)
    assert "target" in reasons and "projector" in reasons and "classifier" in reasons and "EMA" in reasons
    caplog.clear()
    with caplog.at_level("WARNING"):
        explicit = convert_checkpoint(path, fmt="detcon_haiku")
    assert not [r for r in caplog.records if "allow_pickle" in r.getMessage()]
    assert len(explicit.model) == 265


def test_detcon_haiku_without_ema_average_uses_hidden(tv_state, tmp_path):
    params, state = haiku_tree(tv_state)
    ema = state["res_net50/~/initial_batchnorm/~/mean_ema"]
    del ema["average"]
    path = str(tmp_path / "params_state.npy")
    np.save(path, {"params": params, "state": state}, allow_pickle=True)
    result = convert_checkpoint(path, fmt="detcon_haiku")
    assert np.array_equal(result.model["stem.conv1.norm.running_mean"], ema["hidden"].reshape(-1))
    assert np.array_equal(result.model["stem.conv1.norm.running_var"], tv_state["bn1.running_var"].numpy())
    del state["res_net50/~/initial_batchnorm/~/var_ema"]
    np.save(path, {"params": params, "state": state}, allow_pickle=True)
    with pytest.raises(ConversionError, match="running statistics"):
        convert_checkpoint(path, fmt="detcon_haiku")


# ------------------------------------------------------------------ errors
def test_strict_fails_on_unmatched_keys(tv_state, tmp_path):
    path = str(tmp_path / "extra.pth")
    torch.save({**tv_state, "mystery.weight": torch.ones(3)}, path)
    assert convert_checkpoint(path).unmatched == ["mystery.weight"]
    with pytest.raises(ConversionError, match="mystery.weight"):
        convert_checkpoint(path, strict=True)


@pytest.mark.parametrize("suffix", [".pth", ".pkl", ".npy"])
def test_truncated_file_is_a_clear_error(tv_d2, tv_state, tmp_path, suffix):
    path = str(tmp_path / ("full" + suffix))
    if suffix == ".pth":
        torch.save(tv_state, path)
    elif suffix == ".pkl":
        save_d2(tv_d2, path)
    else:
        np.save(path, {"params": haiku_tree(tv_state)[0]}, allow_pickle=True)
    data = open(path, "rb").read()
    cut = str(tmp_path / ("cut" + suffix))
    with open(cut, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated"):
        convert_checkpoint(cut)


def test_missing_bn_statistics_are_an_error(tv_state, tmp_path):
    state = {k: v for k, v in tv_state.items() if k != "layer2.1.bn2.running_var"}
    path = str(tmp_path / "no_stats.pth")
    torch.save(state, path)
    with pytest.raises(ConversionError, match="running statistics"):
        convert_checkpoint(path)


def test_wrong_architecture_is_an_error(tv_state, tmp_path):
    r18 = str(tmp_path / "r18.pth")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), r18)
    assert convert_checkpoint(r18).depth == 18
    with pytest.raises(ConversionError, match="ResNet-18, not the ResNet-50"):
        convert_checkpoint(r18, depth=50)
    wide = dict(tv_state)
    wide["layer1.0.conv2.weight"] = torch.ones(64, 64, 5, 5)
    path = str(tmp_path / "wide.pth")
    torch.save(wide, path)
    with pytest.raises(ConversionError, match="wrong architecture"):
        convert_checkpoint(path)


def test_mismatched_format_flag_is_an_error(tv_file):
    with pytest.raises(ConversionError, match="looks like 'torchvision'"):
        convert_checkpoint(tv_file, fmt="soco")
    with pytest.raises(ConversionError, match="no fpn weights"):
        convert_checkpoint(tv_file, include="backbone,fpn")
    assert convert_checkpoint(tv_file, include="all").include == ("backbone",)  # only what is there


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/soco_d2_pwned",))


def test_untrusted_pickles_cannot_run_code(tmp_path):
    for suffix in (".pkl", ".npy"):
        path = str(tmp_path / ("evil" + suffix))
        if suffix == ".pkl":
            with open(path, "wb") as f:
                pickle.dump({"model": {"stem.conv1.weight": _Exploit()}}, f)
        else:
            np.save(path, {"res_net50/~/initial_conv": {"w": _Exploit()}}, allow_pickle=True)
        with pytest.raises(ConversionError, match="refusing to load"):
            convert_checkpoint(path)
    assert not os.path.exists("/tmp/soco_d2_pwned")


# ------------------------------------------------------------------ command line
def cli_main(argv):
    return load_tool("convert_to_d2").cli(argv)


def test_cli_report_and_exit_codes(tv_file, tmp_path, capsys):
    out, report = str(tmp_path / "tv.pkl"), str(tmp_path / "report.json")
    assert cli_main([tv_file, out, "--strict", "--report", report]) == 0
    printed = capsys.readouterr().out
    assert "converted 265 tensors" in printed and "unmatched 0 keys" in printed and os.path.isfile(report)
    with pytest.raises(SystemExit) as exit_:  # bad input ends a tool as a bad argument does: status 2
        cli_main([tv_file, str(tmp_path / "x.pkl"), "--format", "moco"])
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_cli_verifies_against_a_config(tv_file, tmp_path, capsys):
    out = str(tmp_path / "tv.pkl")
    assert cli_main([tv_file, out, "--verify-config", model_zoo_config_path(STOCK_MASK_RCNN)]) == 0
    assert "backbone: 0 missing" in capsys.readouterr().out
    # FPN / box head asked for but the stock config has none that match a plain backbone checkpoint
    with pytest.raises(SystemExit) as exit_:
        cli_main([tv_file, out, "--include", "backbone,fpn"])
    assert exit_.value.code == 2


def test_convert_tool_help(repo_root):
    proc = subprocess.run([sys.executable, os.path.join(repo_root, "tools", "convert_to_d2.py"), "--help"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for word in ("detcon_haiku", "--include", "--strict", "--to", "restricted unpickler"):
        assert word in proc.stdout
