"""Representation probes on frozen backbone features: weighted kNN and linear
probes, at image level (globally pooled res5) and object level (RoIAlign of
ground-truth boxes), configured by ``TEST.PROBE.*`` (soco_d2/config.py).

Entry points (the pretraining hook ``soco_d2.engine.probe_hook`` and
``tools/probe_net.py`` call these):

* ``build_probe_model(cfg)`` / ``load_probe_weights(model, weights)`` (any weights
  ``tools/convert_to_d2.py`` reads);
* ``run_probes(cfg, model_or_backbone) -> ProbeResults`` (on every rank);
* ``write_probe_results(output_dir, results, weights)``, ``probe_results_markdown``;
* ``plot_metrics(metrics_json)`` -> loss_curve.png (``tools/plot_metrics.py``).

Import chain: the probes themselves (backbone, data, features, classifiers,
``probe``) import data, modeling and config, so the pretraining engine can run
them; weights loading (the converter), results files, plots and the tool's work
(``cli``) come after the engine.
"""
from .backbone import ProbeModel, build_probe_model
from .features import FeatureExtractor, build_region_pooler, frozen, image_embeddings, region_embeddings
from .knn import knn_rank
from .linear import LinearProbeRecipe, train_linear_probe
from .metrics import classification_metrics, rank_logits
from .plot import plot_metrics
from .probe import (
    FeatureSet,
    ProbeResults,
    check_probe_settings,
    evaluate_feature_sets,
    extract_image_features,
    extract_region_features,
    extractor_from_cfg,
    run_probes,
)
from .results import load_probe_results, probe_results_markdown, write_probe_results
from .weights import load_probe_weights

__all__ = [
    "FeatureExtractor",
    "FeatureSet",
    "LinearProbeRecipe",
    "ProbeModel",
    "ProbeResults",
    "build_probe_model",
    "build_region_pooler",
    "check_probe_settings",
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
    "region_embeddings",
    "run_probes",
    "train_linear_probe",
    "write_probe_results",
]
