"""Plot a detectron2 ``metrics.json``: the loss curve and, when the probe hook
logged them, the probe accuracies over the iterations (``tools/plot_metrics.py``).

The file is read by the engine's one reader (``soco_d2.engine.metrics.read_metrics``:
a resumed run's rows win, a row cut short by a killed run is skipped).
Rendering uses matplotlib's Agg canvas directly (no pyplot state, no display).
"""
from __future__ import annotations

import math
import os

from ..engine.metrics import read_metrics


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(iterations, values) of ``key`` over ``read_metrics`` rows (missing and non-finite values left out)."""
    points = [(r["iteration"], r[key]) for r in rows
              if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [int(i) for i, _ in points], [float(v) for _, v in points]


def plot_metrics(metrics_path: str, output_path: str | None = None, loss_keys=("total_loss",),
                 probe_suffixes=("_top1",)) -> str:
    """Write a PNG (default ``loss_curve.png`` next to ``metrics_path``) with the loss
    curve and, when present, every ``probe/*<suffix>`` curve; returns its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_path, key=None)
    losses = {k: series(rows, k) for k in loss_keys}
    losses = {k: s for k, s in losses.items() if s[0]}
    if not losses:
        raise ValueError(f"{metrics_path} has no {list(loss_keys)} values to plot")
    probe_keys = sorted({k for row in rows for k in row
                         if k.startswith("probe/") and k.endswith(tuple(probe_suffixes))})
    probes = {k: series(rows, k) for k in probe_keys}

    figure = Figure(figsize=(7, 6 if probes else 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2 if probes else 1, 1, sharex=True, squeeze=False)[:, 0]
    for key, (x, y) in losses.items():
        axes[0].plot(x, y, label=key, linewidth=1)
    axes[0].set_ylabel("loss")
    axes[0].legend(loc="best", fontsize="small")
    axes[0].grid(alpha=0.3)
    if probes:
        for key, (x, y) in probes.items():
            axes[1].plot(x, y, marker="o", label=key[len("probe/"):], linewidth=1)
        axes[1].set_ylabel("probe accuracy (%)")
        axes[1].legend(loc="best", fontsize="small")
        axes[1].grid(alpha=0.3)
    axes[-1].set_xlabel("iteration")
    figure.suptitle(os.path.basename(os.path.dirname(os.path.abspath(metrics_path))) or "metrics")
    output_path = output_path or os.path.join(os.path.dirname(os.path.abspath(metrics_path)), "loss_curve.png")
    figure.savefig(output_path, dpi=100)
    return output_path
