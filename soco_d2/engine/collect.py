"""Many runs in one table: result files found in folders, repeats grouped by weights,
protocol and dataset, shown as mean ± sample std with their seeds, written as
markdown, CSV and an AP bar plot (``tools/collect_results.py``).  The record of
one run and the protocol fingerprint: :mod:`soco_d2.engine.results`."""
from __future__ import annotations

import csv
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field

from ..errors import InputError
from .results import RESULT_FILES, _columns, _header, load_results

def find_result_files(paths) -> list[str]:
    """The result files named by ``paths``: files as given; a folder's own
    results.json / probe_results.json, or else every one below it (sorted)."""
    found = []
    for path in paths:
        if os.path.isfile(path):
            found.append(path)
            continue
        if not os.path.isdir(path):
            raise InputError(f"{path!r} is neither a results file nor a folder")
        own = [os.path.join(path, name) for name in RESULT_FILES if os.path.isfile(os.path.join(path, name))]
        if not own:
            own = sorted(os.path.join(d, name) for d, _, files in os.walk(path) for name in files if name in RESULT_FILES)
        if not own:
            raise InputError(f"no {' or '.join(RESULT_FILES)} in or below {path!r}")
        found += own
    return list(OrderedDict.fromkeys(os.path.abspath(p) for p in found))


@dataclass
class Group:
    """Runs with the same weights, protocol and dataset: the repeats of one measurement."""

    label: str
    weights: str
    protocol: str
    fingerprint: str | None
    dataset: str
    runs: list = field(default_factory=list)  # load_results records

    @property
    def seeds(self) -> list[str]:
        return [_seed_text(r) for r in self.runs]

    def values(self, task: str, metric: str) -> list[float]:
        found = [r["results"][self.dataset].get(task, {}).get(metric) for r in self.runs]
        return [v for v in found if isinstance(v, (int, float)) and not math.isnan(v)]

    def mean_std(self, task: str, metric: str) -> tuple[float | None, float | None, int]:
        """Mean and sample standard deviation (n - 1 in the denominator; None for one value)."""
        values = self.values(task, metric)
        if not values:
            return None, None, 0
        mean = sum(values) / len(values)
        if len(values) < 2:
            return mean, None, len(values)
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)), len(values)


def _seed_text(record) -> str:
    seed, fold = record.get("seed"), record.get("data_seed")
    if seed is None and fold is None:
        return "?"
    return str(seed) if fold is None else f"{seed}/fold{fold}"


def group_runs(records) -> list[Group]:
    """One group per (weights, protocol fingerprint, dataset), in first-seen order.

    Runs without a recorded protocol (older files) each form their own group.
    """
    groups: OrderedDict = OrderedDict()
    for record in records:
        protocol = record.get("protocol") or {}
        fingerprint = protocol.get("fingerprint")
        for dataset in record["results"]:
            key = (record.get("weights", ""), fingerprint or record["path"], dataset)
            if key not in groups:
                groups[key] = Group(record["label"], record.get("weights", ""), protocol.get("name", "–"),
                                    fingerprint, dataset)
            groups[key].runs.append(record)
    _disambiguate(list(groups.values()))
    return list(groups.values())


def _disambiguate(groups) -> None:
    """Protocols that share a readable name but not a fingerprint get ``#fingerprint`` appended."""
    by_name = {}
    for g in groups:
        by_name.setdefault(g.protocol, set()).add(g.fingerprint)
    for g in groups:
        if len(by_name[g.protocol]) > 1 and g.fingerprint:
            g.protocol = f"{g.protocol} #{g.fingerprint}"


def collect_results(paths) -> list[Group]:
    """Load every result file named by ``paths`` (see :func:`find_result_files`) and group the runs."""
    return group_runs([load_results(p) for p in find_result_files(paths)])


def _group_columns(groups):
    return _columns([(None, {g.dataset: r["results"][g.dataset]}) for g in groups for r in g.runs])


def _fmt_mean_std(mean, std) -> str:
    if mean is None:
        return "–"
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def collected_markdown(groups) -> str:
    """One markdown row per group: mean ± sample std over its runs (the value itself for one run)."""
    columns = _group_columns(groups)
    header = ["Weights", "Protocol", "Dataset", "Runs", "Seeds"] + [_header(t, m) for t, m in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in groups:
        cells = [_fmt_mean_std(*g.mean_std(t, m)[:2]) for t, m in columns]
        lines.append("| " + " | ".join([g.label, g.protocol, g.dataset, str(len(g.runs)), ",".join(g.seeds)] + cells) + " |")
    return "\n".join(lines)


def write_collected_csv(groups, path: str) -> str:
    """One CSV row per group: ``<column>`` is the mean, ``<column>_std`` the sample std (empty for one run)."""
    columns = _group_columns(groups)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        header = ["weights", "label", "protocol", "fingerprint", "dataset", "runs", "seeds"]
        for t, m in columns:
            header += [_header(t, m), _header(t, m) + "_std"]
        writer.writerow(header)
        for g in groups:
            row = [g.weights, g.label, g.protocol, g.fingerprint or "", g.dataset, len(g.runs), " ".join(g.seeds)]
            for t, m in columns:
                mean, std, _ = g.mean_std(t, m)
                row += ["" if mean is None else repr(mean), "" if std is None else repr(std)]
            writer.writerow(row)
    return path


def plot_ap_by_method(groups, path: str, metrics=(("bbox", "AP"), ("segm", "AP"))) -> str | None:
    """Bar plot (PNG): per protocol and dataset, one bar per method and metric, std as error bars.

    Returns None (and writes nothing) when no group has any of ``metrics``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = OrderedDict()
    for g in groups:
        if any(g.values(t, m) for t, m in metrics):
            panels.setdefault((g.protocol, g.dataset), []).append(g)
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.0, 1.6 * max(len(v) for v in panels.values())) * len(panels), 4.2),
                             squeeze=False)
    width = 0.8 / len(metrics)
    for ax, ((protocol, dataset), members) in zip(axes[0], panels.items()):
        for k, (task, metric) in enumerate(metrics):
            stats = [g.mean_std(task, metric) for g in members]
            xs = [i + (k - (len(metrics) - 1) / 2) * width for i in range(len(members))]
            ax.bar(xs, [s[0] or 0.0 for s in stats], width, yerr=[s[1] or 0.0 for s in stats], capsize=3,
                   label=_header(task, metric))
        ax.set_xticks(range(len(members)))
        ax.set_xticklabels([_short_label(g.label) for g in members], rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{dataset}\n{protocol}", fontsize=9)
        ax.set_ylabel("AP")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _short_label(label: str) -> str:
    """``output/x/soco_r50_fpn/model_final_d2.pkl`` -> ``soco_r50_fpn/model_final_d2.pkl``."""
    parts = label.replace(os.sep, "/").split("/")
    return "/".join(parts[-2:])
