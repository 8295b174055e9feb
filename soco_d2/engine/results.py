"""Results tables of one run: ``results.json`` / ``results.md``, the protocol a run
measured, and side-by-side comparisons (``tools/transfer_net.py --compare``).
Many runs as mean ± std: :mod:`soco_d2.engine.collect`.

A run's record (``results.json``; probes write ``probe_results.json`` with the
same schema)::

    {"weights": "path/to/model_final_d2.pkl",    # "" = random init
     "label": "...", "iteration": 90000,
     "seed": 3, "data_seed": 1,                   # cfg.SEED; the subset seed of a ..._seed<N> dataset
     "protocol": {"name": "coco_2017_train 90k", "fingerprint": "3f2a9c01", "config_file": "..."},
     "results": {dataset: {task: {metric: value}}}}

``seed``, ``data_seed`` and ``protocol`` are absent from files written before
they existed; such runs are listed one by one and never averaged.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections import OrderedDict

logger = logging.getLogger(__name__)


TASK_ABBREVIATIONS = OrderedDict([("bbox", "bb"), ("segm", "mk")])
# AP..APl: COCO; APr/APc/APf: LVIS's rare / common / frequent categories
METRIC_ORDER = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
_METRIC_SUFFIX = {"AP": "", "AP50": "50", "AP75": "75", "APs": "S", "APm": "M", "APl": "L",
                  "APr": "r", "APc": "c", "APf": "f"}
# representation probes (probe_results.json)
PROBE_TASKS = ("image_knn", "image_linear", "region_knn", "region_linear")
PROBE_METRICS = ("top1", "top5", "mean_class_acc")
RESULT_FILES = ("results.json", "probe_results.json")


def weights_label(weights: str) -> str:
    return weights if weights else "random init"


def _current_iteration():
    try:
        from detectron2.utils.events import get_event_storage

        return int(get_event_storage().iter)
    except (AssertionError, ImportError):
        return None


# ---------------------------------------------------------------- the protocol of a run
# keys that change where or how fast a run goes, not what it measures
_RUN_SPECIFIC_KEYS = ("SEED", "OUTPUT_DIR", "MODEL.WEIGHTS", "MODEL.DEVICE", "DATALOADER.NUM_WORKERS",
                      "TEST.EVAL_PERIOD", "SOLVER.CHECKPOINT_PERIOD", "VIS_PERIOD")
_DATA_SEED = re.compile(r"_seed(\d+)$")


def data_seed(dataset_names) -> int | None:
    """The subset seed N of ``..._seed<N>`` training sets (semi-supervised folds), else None."""
    seeds = {int(m.group(1)) for name in dataset_names if (m := _DATA_SEED.search(name))}
    return seeds.pop() if len(seeds) == 1 else None


def protocol_of(cfg, config_file: str | None = None) -> dict:
    """``{"name", "fingerprint", "config_file"}`` of a run's config.

    The fingerprint hashes the whole config except run-specific keys (seed,
    output folder, weights, device, workers, periods) and with a subset's
    ``_seed<N>`` replaced by ``_seed*``: runs that differ only in seed and
    weights share it, so their results can be averaged.
    """
    values = {}
    for key, value in _flatten(cfg):
        if key in _RUN_SPECIFIC_KEYS:
            continue
        if key in ("DATASETS.TRAIN", "DATASETS.TEST"):
            value = [_DATA_SEED.sub("_seed*", name) for name in value]
        values[key] = value
    blob = json.dumps(values, sort_keys=True, default=str)
    train = "+".join(_DATA_SEED.sub("_seed*", name) for name in cfg.DATASETS.TRAIN)
    iters = cfg.SOLVER.MAX_ITER
    length = f"{iters // 1000}k" if iters >= 1000 and iters % 1000 == 0 else f"{iters}it"
    record = {"name": f"{train} {length}", "fingerprint": hashlib.sha1(blob.encode()).hexdigest()[:8]}
    if config_file:
        record["config_file"] = config_file
    return record


def _flatten(node, prefix=""):
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        else:
            yield name, list(value) if isinstance(value, tuple) else value


# ---------------------------------------------------------------- one run
def write_results(output_dir: str, results: dict, weights: str = "", cfg=None, config_file: str | None = None,
                  filename: str = "results.json") -> str:
    """Save ``filename`` (the record above) and a markdown table next to it (``results.md``).

    With ``cfg``, the record also says the seed, the subset seed and the protocol.
    AP values below 0 (the LVIS/COCO APIs' "no ground truth in this range") are stored as null.
    """
    os.makedirs(output_dir, exist_ok=True)
    record = {
        "weights": weights,
        "label": weights_label(weights),
        "iteration": _current_iteration(),
    }
    if cfg is not None:
        record["seed"] = int(cfg.SEED)
        record["data_seed"] = data_seed(cfg.DATASETS.TRAIN)
        record["protocol"] = protocol_of(cfg, config_file)
    record["results"] = _without_sentinels(_to_builtin(results))
    path = os.path.join(output_dir, filename)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    table = os.path.splitext(filename)[0] + ".md"
    with open(os.path.join(output_dir, table), "w") as f:
        f.write(results_markdown([(record["label"], record["results"])]) + "\n")
    logger.info("wrote %s and %s", path, table)
    return path


def load_results(path: str) -> dict:
    """A ``results.json`` (or the folder holding one)."""
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    with open(path) as f:
        record = json.load(f)
    if "results" not in record:  # a plain dataset -> task -> metric dict
        record = {"weights": "", "label": os.path.basename(os.path.dirname(os.path.abspath(path))), "results": record}
    record.setdefault("label", weights_label(record.get("weights", "")))
    record.setdefault("seed", None)
    record.setdefault("data_seed", None)
    record.setdefault("protocol", None)
    record["path"] = os.path.abspath(path)
    return record


def _columns(runs) -> list[tuple[str, str]]:
    present = set()
    for _, results in runs:
        for tasks in results.values():
            for task, metrics in tasks.items():
                present.update((task, m) for m in metrics)
    tasks = {t for t, _ in present}
    ordered = [t for t in TASK_ABBREVIATIONS if t in tasks] + [t for t in PROBE_TASKS if t in tasks]
    ordered += sorted(tasks - set(ordered))
    columns = []
    for task in ordered:
        metrics = {m for t, m in present if t == task}
        if task in TASK_ABBREVIATIONS:  # the summary metrics; per-category AP ("AP-<class>") stays in the json
            columns += [(task, m) for m in METRIC_ORDER if m in metrics]
        else:
            columns += [(task, m) for m in PROBE_METRICS if m in metrics]
            columns += [(task, m) for m in sorted(metrics - set(PROBE_METRICS))]
    return columns


def _header(task: str, metric: str) -> str:
    if task in TASK_ABBREVIATIONS and metric in _METRIC_SUFFIX:
        return f"AP{TASK_ABBREVIATIONS[task]}{_METRIC_SUFFIX[metric]}"
    return f"{task} {metric}"


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"  # not measured, or NaN (no predictions / no ground truth)
    return f"{value:.1f}"


def results_markdown(runs, delta: bool = False) -> str:
    """Markdown table, one row per (run, dataset): AP, AP50, AP75, APs/m/l per task.

    ``runs`` is a list of ``(label, {dataset: {task: {metric: value}}})``.
    With ``delta`` and two runs, a last row gives first minus second.
    """
    columns = _columns(runs)
    datasets = list(OrderedDict.fromkeys(d for _, results in runs for d in results))
    header = ["Weights", "Dataset"] + [_header(t, m) for t, m in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = []
    for label, results in runs:
        for dataset in datasets:
            if dataset not in results:
                continue
            values = [results[dataset].get(t, {}).get(m) for t, m in columns]
            rows.append(values)
            lines.append("| " + " | ".join([label, dataset] + [_fmt(v) for v in values]) + " |")
    if delta and len(runs) == 2 and len(rows) == 2:
        diff = [None if a is None or b is None else a - b for a, b in zip(*rows)]
        lines.append("| " + " | ".join([f"Δ ({runs[0][0]} − {runs[1][0]})", ""] + [
            "–" if v is None else f"{v:+.1f}" for v in diff]) + " |")
    return "\n".join(lines)


def compare_results(paths, labels=None, probes=None) -> str:
    """Side-by-side markdown table of several ``results.json`` files (first minus second as Δ);
    ``probes``: one ``probe_results.json`` (or its folder) per row, whose columns join that row."""
    records = [load_results(p) for p in paths]
    labels = list(labels or [])
    if labels and len(labels) != len(records):
        raise ValueError(f"{len(labels)} labels for {len(records)} results files")
    if probes and len(probes) != len(records):
        raise ValueError(f"{len(probes)} probe results for {len(records)} results files")
    for record, probe in zip(records, probes or []):
        probe = os.path.join(probe, "probe_results.json") if os.path.isdir(probe) else probe
        for dataset, tasks in load_results(probe)["results"].items():
            record["results"].setdefault(dataset, {}).update(tasks)
    runs = [(labels[i] if labels else r["label"], r["results"]) for i, r in enumerate(records)]
    return results_markdown(runs, delta=True)


def _to_builtin(obj):
    """numpy scalars -> Python numbers; NaN (e.g. AP without predictions) -> None (valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): _to_builtin(v) for k, v in obj.items()}
    if hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _without_sentinels(results: dict) -> dict:
    """AP < 0 is the evaluation APIs' -1 x 100 for "no ground truth in this range/group": None."""
    return {dataset: {task: {m: (None if m.startswith("AP") and isinstance(v, (int, float)) and v < 0 else v)
                             for m, v in metrics.items()} if isinstance(metrics, dict) else metrics
                      for task, metrics in tasks.items()}
            for dataset, tasks in results.items()}
