"""Results tables: ``results.json`` / ``results.md`` of one run and side-by-side comparisons."""
from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict

logger = logging.getLogger(__name__)


TASK_ABBREVIATIONS = OrderedDict([("bbox", "bb"), ("segm", "mk")])
METRIC_ORDER = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_METRIC_SUFFIX = {"AP": "", "AP50": "50", "AP75": "75", "APs": "S", "APm": "M", "APl": "L"}


def weights_label(weights: str) -> str:
    return weights if weights else "random init"


def _current_iteration():
    try:
        from detectron2.utils.events import get_event_storage

        return int(get_event_storage().iter)
    except (AssertionError, ImportError):
        return None


def write_results(output_dir: str, results: dict, weights: str = "") -> str:
    """Save ``results.json`` ({weights, iteration, results: dataset -> task -> metric}) and ``results.md``."""
    os.makedirs(output_dir, exist_ok=True)
    record = {
        "weights": weights,
        "label": weights_label(weights),
        "iteration": _current_iteration(),
        "results": _to_builtin(results),
    }
    path = os.path.join(output_dir, "results.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(results_markdown([(record["label"], record["results"])]) + "\n")
    logger.info("wrote %s and results.md", path)
    return path


def load_results(path: str) -> dict:
    """A ``results.json`` (or the folder holding one)."""
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    with open(path) as f:
        record = json.load(f)
    if "results" not in record:  # a plain dataset -> task -> metric dict
        record = {"weights": "", "label": os.path.basename(os.path.dirname(os.path.abspath(path))), "results": record}
    return record


def _columns(runs) -> list[tuple[str, str]]:
    present = set()
    for _, results in runs:
        for tasks in results.values():
            for task, metrics in tasks.items():
                present.update((task, m) for m in metrics)
    tasks = list(TASK_ABBREVIATIONS) + sorted({t for t, _ in present} - set(TASK_ABBREVIATIONS))
    return [(t, m) for t in tasks for m in METRIC_ORDER if (t, m) in present]


def _header(task: str, metric: str) -> str:
    return f"AP{TASK_ABBREVIATIONS.get(task, task)}{_METRIC_SUFFIX[metric]}"


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


def compare_results(paths, labels=None) -> str:
    """Side-by-side markdown table of several ``results.json`` files (first minus second as Δ)."""
    records = [load_results(p) for p in paths]
    labels = list(labels or [])
    if labels and len(labels) != len(records):
        raise ValueError(f"{len(labels)} labels for {len(records)} results files")
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
