#!/usr/bin/env python
"""The learning check a CPU can afford: do the features of each pretraining method,
trained on the demo photos, classify objects better than random init?

Each method runs its demo config (configs/demo/*.yaml: the paper recipe at demo
sizes, not tuned here) on a ResNet-18 with views at half the demo's side, for a
fixed number of iterations, in this process.  Its online backbone is probed
(``soco_d2.evaluation.run_probes``, the probe hook's code path; SoCo_C4 with its
region head's res5) before the first iteration (the method's own init) and after
the last one, on two tasks made from the demo instance sets (3 classes: disc,
triangle, square, painted in random colours on the demo photos):

* object level: RoIAlign (7x7, averaged) of res5 at every ground-truth box,
  memory demo_instances_train (81 boxes) -> queries demo_instances_val (26);
* image level: globally pooled res5 of object crops (each box with 50% context,
  resized to 64 px) as labelled image folders, train -> val;

with the weighted kNN (k 20, T 0.07) and the linear probe, top-1 in percent.
References: detectron2's random init of the same ResNet-18 (the transfer
baseline) and, only if its weights are in the local torch hub cache (nothing is
downloaded), torchvision's ImageNet-supervised ResNet-18.

    python bench/bench_learning.py                           # every method, 100 iterations
    python bench/bench_learning.py --methods byol soco --iters 30
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import soco_d2  # noqa: E402  (compat shims first)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data import detection_utils as utils  # noqa: E402
from PIL import Image  # noqa: E402

from soco_d2.config import get_pretrain_cfg  # noqa: E402
from soco_d2.engine import PretrainTrainer  # noqa: E402
from soco_d2.evaluation import build_probe_model, load_probe_weights, run_probes  # noqa: E402

BOXES = os.path.join(ROOT, "proposals", "demo_images_ss.pcache")
MASKS = os.path.join(ROOT, "proposals", "demo_images_fh.pcache")
METHODS = {  # make demo's METHOD names -> demo config
    "soco": "soco_r50_fpn", "soco_c4": "soco_r50_c4", "soco_star": "soco_star_r50_fpn",
    "detcon": "detcon_b_r50_fpn", "detcon_c5": "detcon_b_r50", "detcon_s": "detcon_s_r50",
    "densecl": "densecl_r50", "byol": "byol_r50", "mocov2": "mocov2_r50",
}
R18 = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
TASKS = (("region_knn", "obj kNN"), ("region_linear", "obj lin"), ("image_knn", "img kNN"), ("image_linear", "img lin"))


def ensure_caches() -> None:
    for path, method in ((BOXES, "selective_search"), (MASKS, "felzenszwalb")):
        if not os.path.isfile(path):
            subprocess.run([sys.executable, os.path.join(ROOT, "tools", "precompute_proposals.py"), "--dataset",
                            "demo_images", "--method", method, "--output", path, "--no-progress"], check=True)


def make_crop_folders(root: str, size: int = 64, context: float = 0.5) -> dict:
    """``root/<split>/<class>/*.png``: every box of demo_instances_<split>, enlarged by
    ``context`` of its side, clipped to the image, resized to ``size`` x ``size``."""
    folders = {}
    for split in ("train", "val"):
        name = f"demo_instances_{split}"
        classes = MetadataCatalog.get(name).thing_classes
        for record in DatasetCatalog.get(name):
            image = utils.read_image(record["file_name"], format="RGB")
            h, w = image.shape[:2]
            for k, ann in enumerate(record["annotations"]):
                x, y, bw, bh = ann["bbox"]
                pad_x, pad_y = bw * context / 2, bh * context / 2
                x0, y0 = int(max(0, x - pad_x)), int(max(0, y - pad_y))
                x1, y1 = int(min(w, x + bw + pad_x)), int(min(h, y + bh + pad_y))
                folder = os.path.join(root, split, classes[ann["category_id"]])
                os.makedirs(folder, exist_ok=True)
                crop = Image.fromarray(image[y0:y1, x0:x1]).resize((size, size), Image.BILINEAR)
                crop.save(os.path.join(folder, f"{record['image_id']}_{k}.png"))
        folders[split] = os.path.join(root, split)
    return folders


def probe_opts(folders: dict) -> list:
    return [
        "TEST.PROBE.REGION_MEMORY", "demo_instances_train", "TEST.PROBE.REGION_QUERIES", "demo_instances_val",
        "TEST.PROBE.REGION_FEATURES", ["res5"], "TEST.PROBE.REGION_MIN_SIZE", 320, "TEST.PROBE.REGION_MAX_SIZE", 320,
        "TEST.PROBE.IMAGE_MEMORY", folders["train"], "TEST.PROBE.IMAGE_QUERIES", folders["val"],
        "TEST.PROBE.IMAGE_FEATURE", "res5", "TEST.PROBE.IMAGE_RESIZE", 64, "TEST.PROBE.IMAGE_CROP", 64,
        "TEST.PROBE.MAX_MEMORY_IMAGES", 0, "TEST.PROBE.BATCH_SIZE", 16, "TEST.PROBE.NUM_WORKERS", 0,
    ]


def half_views(sizes) -> list[int]:
    return [max(32, 32 * round(s / 2 / 32)) for s in sizes]


def method_cfg(config: str, folders: dict, iters: int, output_dir: str):
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "demo", f"{config}.yaml"))
    cfg.merge_from_list(R18 + probe_opts(folders) + [
        "INPUT.SSL.VIEW_SIZES", half_views(cfg.INPUT.SSL.VIEW_SIZES), "SOLVER.MAX_ITER", iters,
        "SOLVER.CHECKPOINT_PERIOD", 10 ** 6, "TEST.PROBE.ENABLED", False, "DATALOADER.NUM_WORKERS", 0,
        "PROPOSALS.BOX_CACHE", BOXES, "PROPOSALS.MASK_CACHE", MASKS, "OUTPUT_DIR", output_dir, "SEED", 0,
    ])
    cfg.freeze()
    return cfg


def top1(results) -> dict:
    return {task: metrics["top1"] for tasks in results.metrics.values() for task, metrics in tasks.items()}


def reference_rows(folders: dict) -> list:
    """detectron2's random init of the ResNet-18, and torchvision's ImageNet ResNet-18 when cached."""
    cfg = get_pretrain_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-Pretrain.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN"] + R18 + probe_opts(folders))
    torch.manual_seed(0)
    rows = [("random init (detectron2)", "-", top1(run_probes(cfg, build_probe_model(cfg), progress=False)), 0.0)]
    cached = sorted(glob.glob(os.path.join(torch.hub.get_dir(), "checkpoints", "resnet18-*.pth")))
    if cached:
        model = build_probe_model(cfg)
        load_probe_weights(model, cached[0], features=["res5"], depth=18)
        rows.append(("ImageNet supervised (torchvision)", "-", top1(run_probes(cfg, model, progress=False)), 0.0))
    else:
        print(f"ImageNet-supervised reference: not available offline (no resnet18-*.pth in "
              f"{os.path.join(torch.hub.get_dir(), 'checkpoints')}; nothing is downloaded)", flush=True)
    return rows


def run_method(name: str, config: str, folders: dict, iters: int, workdir: str) -> list:
    cfg = method_cfg(config, folders, iters, os.path.join(workdir, name))
    torch.manual_seed(0)
    trainer = PretrainTrainer(cfg, progress=False)
    trainer.resume_or_load(resume=False)
    init = top1(run_probes(cfg, trainer._trainer.model, progress=False))
    start, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    final = top1(run_probes(cfg, trainer._trainer.model, progress=False))
    print(f"{name}: {iters} iterations in {wall:.0f} s ({cpu:.0f} CPU-s)", flush=True)
    return [(f"{name} init", 0, init, 0.0), (f"{name} pretrained", iters, final, wall)]


def table(rows) -> str:
    header = "| weights | iterations | " + " | ".join(label for _, label in TASKS) + " | pretrain s |"
    lines = [header, "|" + "---|" * (len(TASKS) + 3)]
    for label, iters, values, seconds in rows:
        cells = [f"{values[t]:.1f}" if t in values else "–" for t, _ in TASKS]
        lines.append(f"| {label} | {iters} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--iters", type=int, default=100, help="pretraining iterations per method")
    args = parser.parse_args()
    ensure_caches()
    torch.set_num_threads(1)  # on a shared 2-core machine a second OpenMP thread spins: 20x slower steps
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_learning-") as workdir:
        folders = make_crop_folders(os.path.join(workdir, "crops"))
        counts = {s: sum(len(files) for _, _, files in os.walk(f)) for s, f in folders.items()}
        print(f"image-level sets (object crops): {counts['train']} train, {counts['val']} val", flush=True)
        rows = reference_rows(folders)
        for name in args.methods:
            rows += run_method(name, METHODS[name], folders, args.iters, workdir)
            print(table(rows), flush=True)
    print(f"\n{table(rows)}\n\ntotal {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
