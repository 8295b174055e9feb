"""``probe_results.json`` and its markdown row, in the style of transfer's results.json.

Schema (the one transfer's ``results.json`` uses, plus per-class accuracies):

    {"weights": str, "label": str, "iteration": int | null,
     "seed": int, "data_seed": null, "protocol": {"name", "fingerprint"},   # with the run's cfg
     "results": {dataset: {task: {metric: value}}},     # percent, NaN -> null
     "per_class": {dataset: {task: {class name: top-1}}}}

so ``tools/collect_results.py`` and ``transfer_net.py --compare`` read it like a
``results.json`` (repeats with the same protocol are averaged).

Tasks: image_knn, image_linear, region_knn, region_linear; metrics: top1,
top5, mean_class_acc.
"""
from __future__ import annotations

import json
import math
import os
from collections import OrderedDict

from ..engine.results import protocol_of

TASK_NAMES = OrderedDict([
    ("image_knn", "img kNN"), ("image_linear", "img lin"), ("region_knn", "obj kNN"), ("region_linear", "obj lin"),
])
METRIC_NAMES = OrderedDict([("top1", "top-1"), ("top5", "top-5"), ("mean_class_acc", "mAcc")])
RESULTS_FILE = "probe_results.json"


def weights_label(weights: str) -> str:
    return weights if weights else "random init"


def to_builtin(obj):
    """numpy / torch scalars -> Python numbers; NaN -> None (valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): to_builtin(v) for k, v in obj.items()}
    if hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def current_iteration():
    """The iteration of the running trainer's EventStorage, None outside training."""
    from detectron2.utils.events import get_event_storage

    try:
        return int(get_event_storage().iter)
    except AssertionError:
        return None


def probe_protocol(cfg, config_file: str | None = None) -> dict:
    """The protocol record of a probe run: named after its memory -> query sets, with the
    fingerprint of ``engine.results.protocol_of`` (the config minus seed, weights, paths)."""
    probe = cfg.TEST.PROBE
    pairs = [(m, q) for m, q in ((probe.IMAGE_MEMORY, probe.IMAGE_QUERIES), (probe.REGION_MEMORY, probe.REGION_QUERIES)) if m]
    record = protocol_of(cfg, config_file)
    record["name"] = "probe " + ", ".join(f"{os.path.basename(os.path.normpath(m))}->{os.path.basename(os.path.normpath(q))}"
                                          for m, q in pairs)
    return record


def write_probe_results(output_dir: str, results, weights: str = "", iteration: int | None = None,
                        label: str | None = None, cfg=None, config_file: str | None = None) -> str:
    """Write ``probe_results.json`` and ``probe_results.md`` (one row per query set) to
    ``output_dir``; ``results`` is a ``ProbeResults``; with ``cfg``, also the seed and the
    protocol.  Returns the json path."""
    os.makedirs(output_dir, exist_ok=True)
    record = {
        "weights": weights,
        "label": label or weights_label(weights),
        "iteration": current_iteration() if iteration is None else int(iteration),
    }
    if cfg is not None:
        record.update(seed=int(cfg.SEED), data_seed=None, protocol=probe_protocol(cfg, config_file))
    record.update(results=to_builtin(results.metrics), per_class=to_builtin(results.per_class))
    path = os.path.join(output_dir, RESULTS_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)
    with open(os.path.join(output_dir, "probe_results.md"), "w") as f:
        f.write(probe_results_markdown([(record["label"], record["results"])]) + "\n")
    return path


def load_probe_results(path: str) -> dict:
    """A ``probe_results.json`` (or the folder holding one)."""
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS_FILE)
    with open(path) as f:
        record = json.load(f)
    if "results" not in record:
        raise ValueError(f"{path} is not a probe results file (no 'results')")
    record.setdefault("label", weights_label(record.get("weights", "")))
    return record


def _columns(runs) -> list[tuple[str, str]]:
    present = {(t, m) for _, results in runs for tasks in results.values() for t, ms in tasks.items() for m in ms}
    tasks = list(TASK_NAMES) + sorted({t for t, _ in present} - set(TASK_NAMES))
    return [(t, m) for t in tasks for m in METRIC_NAMES if (t, m) in present]


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"  # not defined (top-5 of <= 5 classes) or not run
    return f"{value:.1f}"


def probe_results_markdown(runs, delta: bool = False) -> str:
    """Markdown table, one row per (run, query dataset), a column per (task, metric) present.

    ``runs`` is a list of ``(label, {dataset: {task: {metric: value}}})``; with
    ``delta`` and two runs of one dataset, a last row gives first minus second.
    """
    columns = _columns(runs)
    datasets = list(OrderedDict.fromkeys(d for _, results in runs for d in results))
    header = ["Weights", "Dataset"] + [f"{TASK_NAMES.get(t, t)} {METRIC_NAMES[m]}" for t, m in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = []
    for label, results in runs:
        for dataset in datasets:
            if dataset in results:
                values = [results[dataset].get(t, {}).get(m) for t, m in columns]
                rows.append(values)
                lines.append("| " + " | ".join([label, dataset] + [_fmt(v) for v in values]) + " |")
    if delta and len(runs) == 2 and len(rows) == 2:
        diff = [None if a is None or b is None or a != a or b != b else a - b for a, b in zip(*rows)]
        lines.append("| " + " | ".join([f"Δ ({runs[0][0]} − {runs[1][0]})", ""]
                                       + ["–" if v is None else f"{v:+.1f}" for v in diff]) + " |")
    return "\n".join(lines)
