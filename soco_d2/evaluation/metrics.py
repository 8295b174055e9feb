"""Accuracy metrics of a probe, in percent (as detectron2 reports AP).

* ``top1``: fraction of queries whose first-ranked class is right;
* ``top5``: ... whose class is among the first five; NaN when there are at
  most five classes (it would be 100 by definition for the linear probe);
* ``mean_class_acc``: top-1 of each class that has queries, averaged over
  those classes (the number long-tailed sets such as COCO objects need).
"""
from __future__ import annotations

import math

import torch


def rank_logits(logits: torch.Tensor, topk: int = 5) -> torch.Tensor:
    """Classes of each row ranked by score, (Q, min(topk, C)); ties: lower class first."""
    return logits.sort(dim=1, descending=True, stable=True).indices[:, : min(topk, logits.shape[1])]


def classification_metrics(ranked: torch.Tensor, labels: torch.Tensor, class_names) -> tuple[dict, dict]:
    """``({"top1", "top5", "mean_class_acc"}, {class name: top-1})`` of ranked predictions.

    ``ranked`` is (Q, W) class indices, best first (-1 = no prediction);
    ``labels`` (Q,).  Classes without queries are absent from the per-class dict.
    """
    if len(ranked) != len(labels):
        raise ValueError(f"{len(ranked)} predictions for {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("no queries to evaluate")
    labels = labels.to(ranked.device, torch.long).view(-1, 1)
    correct1 = (ranked[:, :1] == labels).any(dim=1).double()
    per_class = {}
    for index, name in enumerate(class_names):
        mask = labels[:, 0] == index
        if mask.any():
            per_class[name] = 100.0 * correct1[mask].mean().item()
    num_classes = len(class_names)
    top5 = 100.0 * (ranked[:, :5] == labels).any(dim=1).double().mean().item() if num_classes > 5 else math.nan
    metrics = {
        "top1": 100.0 * correct1.mean().item(),
        "top5": top5,
        "mean_class_acc": sum(per_class.values()) / len(per_class),
    }
    return metrics, per_class
