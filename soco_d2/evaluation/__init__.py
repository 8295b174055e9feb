"""Representation probes on frozen backbone features: weighted kNN and linear
probes, at image level (globally pooled res5) and object level (RoIAlign of
ground-truth boxes), configured by ``TEST.PROBE.*`` (soco_d2/config.py).

Entry points (the pretraining hook and tools/probe_net.py call these):

* ``build_probe_model(cfg)`` / ``load_probe_weights(model, weights)``;
* ``run_probes(cfg, model_or_backbone) -> ProbeResults`` (on every rank);
* ``write_probe_results(output_dir, results, weights)``, ``probe_results_markdown``;
* ``plot_metrics(metrics_json)`` -> loss_curve.png.

Import chain: evaluation imports data, modeling and config, never engine.
"""
from .backbone import ProbeModel, build_probe_model, load_probe_weights
from .features import FeatureExtractor, build_region_pooler, frozen, image_embeddings, region_embeddings
from .knn import knn_rank
from .linear import LinearProbeRecipe, train_linear_probe
from .metrics import classification_metrics, rank_logits
from .plot import plot_metrics, read_metrics
from .probe import (
    FeatureSet,
    ProbeResults,
    evaluate_feature_sets,
    extract_image_features,
    extract_region_features,
    extractor_from_cfg,
    run_probes,
)
from .results import load_probe_results, probe_results_markdown, write_probe_results

__all__ = [
    "FeatureExtractor",
    "FeatureSet",
    "LinearProbeRecipe",
    "ProbeModel",
    "ProbeResults",
    "build_probe_model",
    "build_region_pooler",
    "classification_metrics",
    "evaluate_feature_sets",
    "extract_image_features",
    "extract_region_features",
    "extractor_from_cfg",
    "frozen",
    "image_embeddings",
    "knn_rank",
    "load_probe_results",
    "load_probe_weights",
    "plot_metrics",
    "probe_results_markdown",
    "rank_logits",
    "read_metrics",
    "region_embeddings",
    "run_probes",
    "train_linear_probe",
    "write_probe_results",
]
