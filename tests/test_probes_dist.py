"""Distributed probe extraction: 2 gloo processes give the features and accuracies of 1.

Each rank extracts a contiguous shard (uneven here: 11 query images) and the rows
are gathered in rank order; a 1-image set leaves rank 1 with an empty shard.
"""
import soco_d2  # noqa: F401
import torch
from detectron2.utils import comm

from dist_utils import run_in_gloo_processes
from probe_utils import (
    make_colour_folders,
    make_colour_instances,
    one_thread,
    register_colour_instances,
    tiny_probe_cfg,
)
from soco_d2.evaluation import (
    build_probe_model,
    extract_image_features,
    extract_region_features,
    extractor_from_cfg,
    run_probes,
)
from soco_d2.evaluation.results import to_builtin


def _probe_worker(cfg, root):
    for split in ("memory", "queries"):
        register_colour_instances(root, split)  # the catalog is per process
    torch.manual_seed(0)  # the same random backbone in every process
    model = build_probe_model(cfg)
    with one_thread():  # as each gloo worker (the 1-process run is this pytest process)
        results = run_probes(cfg, model, progress=False)
        extractor = extractor_from_cfg(cfg, model)
        probe = cfg.TEST.PROBE
        image = extract_image_features(cfg, extractor, probe.IMAGE_QUERIES, progress=False)
        region = extract_region_features(cfg, extractor, probe.REGION_QUERIES, progress=False)
        single = extract_region_features(cfg, extractor, probe.REGION_MEMORY, max_images=1, progress=False)
    sets = {"image": image, "region": region, "single": single}
    return {
        "world_size": comm.get_world_size(),
        "metrics": results.metrics,
        "sets": {k: {"features": s.features, "labels": s.labels, "image_index": s.image_index}
                 for k, s in sets.items()},
    }


def test_two_gloo_processes_give_the_features_and_accuracy_of_one(tmp_path):
    root = str(tmp_path)
    folders = make_colour_folders(root, {"memory": 4, "queries": 3})
    make_colour_instances(root, "memory", 16)
    make_colour_instances(root, "queries", 11)
    cfg = tiny_probe_cfg(
        "TEST.PROBE.IMAGE_MEMORY", folders["memory"], "TEST.PROBE.IMAGE_QUERIES", folders["queries"],
        "TEST.PROBE.REGION_MEMORY", "probe_colour_memory", "TEST.PROBE.REGION_QUERIES", "probe_colour_queries",
        "TEST.PROBE.BATCH_SIZE", 4,
    )
    (one,) = run_in_gloo_processes(_probe_worker, 1, cfg, root)
    two = run_in_gloo_processes(_probe_worker, 2, cfg, root)
    assert one["world_size"] == 1 and [r["world_size"] for r in two] == [2, 2]
    print("metrics, 1 process:", one["metrics"])
    assert to_builtin(two[0]["metrics"]) == to_builtin(two[1]["metrics"]) == to_builtin(one["metrics"])  # NaN -> None
    assert set(one["metrics"]) == {folders["queries"], "probe_colour_queries"}
    sizes = {"image": 12, "region": 22, "single": 2}  # 4 classes x 3 images; 11 images x 2 boxes; 1 image
    for key, size in sizes.items():
        reference = one["sets"][key]
        assert len(reference["features"]) == size
        for name in ("labels", "image_index"):
            assert torch.equal(reference[name], two[0]["sets"][key][name]), (key, name)
        for rank in two:
            assert torch.equal(rank["sets"][key]["features"], two[0]["sets"][key]["features"])  # gathered alike
        # other batches (a shard's batches differ from the 1-process ones): float rounding may differ
        torch.testing.assert_close(two[0]["sets"][key]["features"], reference["features"], rtol=1e-4, atol=1e-5)
