"""``run_probes``: the configured kNN / linear probes of one backbone, end to end.

The one entry the pretraining hook and ``tools/probe_net.py`` share:

    results = run_probes(cfg, model_or_backbone)      # on every rank
    write_probe_results(output_dir, results, weights)  # main process

Tasks: ``image_knn`` / ``image_linear`` (globally pooled TEST.PROBE.IMAGE_FEATURE
of labelled image folders) and ``region_knn`` / ``region_linear`` (RoIAlign of
the ground-truth boxes of detectron2 instance datasets on
TEST.PROBE.REGION_FEATURES); each reports top1, top5 and mean_class_acc on the
query set, in percent, under the query set's name.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from detectron2.data import DatasetCatalog
from detectron2.utils import comm

from ..errors import InputError
from .backbone import build_probe_model
from .data import (
    ImageProbeMapper,
    RegionProbeMapper,
    align_classes,
    evenly_spaced,
    instance_records,
    labelled_image_folder,
    resolve_image_folder,
)
from .distributed import extract
from .features import (
    BackboneWithRes5,
    FeatureExtractor,
    build_region_pooler,
    frozen,
    image_embeddings,
    region_embeddings,
)
from .knn import knn_rank
from .linear import LinearProbeRecipe, train_linear_probe
from .metrics import classification_metrics, rank_logits

logger = logging.getLogger(__name__)
CLASSIFIERS = ("knn", "linear")


class NonFiniteFeaturesError(ValueError):
    """The backbone gave NaN/inf features: there is nothing to classify."""


@dataclass
class FeatureSet:
    """Features (N, D) of one dataset with their labels (N,), class names and, per
    row, the index of the image it comes from (object level: several rows per image)."""

    features: torch.Tensor
    labels: torch.Tensor
    image_index: torch.Tensor
    class_names: list[str]


@dataclass
class ProbeResults:
    """``metrics``: dataset -> task -> {top1, top5, mean_class_acc} (percent, NaN = undefined);
    ``per_class``: dataset -> task -> class name -> top-1 (percent)."""

    metrics: dict = field(default_factory=dict)
    per_class: dict = field(default_factory=dict)

    def add(self, dataset: str, task: str, metrics: dict, per_class: dict) -> None:
        self.metrics.setdefault(dataset, {})[task] = metrics
        self.per_class.setdefault(dataset, {})[task] = per_class

    def scalars(self, prefix: str = "probe/") -> dict[str, float]:
        """Flat ``probe/<task>_<metric>`` values for metrics.json / TensorBoard (NaN left out)."""
        flat = {}
        for tasks in self.metrics.values():
            for task, metrics in tasks.items():
                for metric, value in metrics.items():
                    if value == value:
                        flat[f"{prefix}{task}_{metric}"] = value
        return flat


# ---------------------------------------------------------------- backbone
def probed_backbone(model_or_backbone: nn.Module) -> nn.Module:
    """The backbone of a (DDP-wrapped) meta-architecture, or the backbone itself.

    A model whose backbone stops at res4 and whose region head holds the res5 stage
    (SoCo_C4) gives that backbone followed by the head's res5 (``BackboneWithRes5``):
    its res5 features are the pretrained ones."""
    module = getattr(model_or_backbone, "module", model_or_backbone)  # DistributedDataParallel
    backbone = getattr(module, "backbone", module)
    if not hasattr(backbone, "output_shape"):
        raise TypeError(f"{type(module).__name__} is neither a detectron2 Backbone nor has a .backbone")
    res5 = getattr(getattr(module, "box_head", None), "res5", None)
    shapes = backbone.output_shape()
    if res5 is not None and "res5" not in shapes and "res4" in shapes:
        return BackboneWithRes5(backbone, res5)
    return backbone


def extractor_from_cfg(cfg, model_or_backbone: nn.Module) -> FeatureExtractor:
    return FeatureExtractor(probed_backbone(model_or_backbone), cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)


def _recipe(cfg) -> LinearProbeRecipe:
    return LinearProbeRecipe(max_iter=cfg.TEST.PROBE.LINEAR.MAX_ITER, weight_decay=cfg.TEST.PROBE.LINEAR.WEIGHT_DECAY)


# ---------------------------------------------------------------- features
def extract_image_features(cfg, extractor: FeatureExtractor, dataset: str, classes=None, *,
                           max_images: int = 0, progress: bool = True) -> FeatureSet:
    """Globally pooled features of a labelled image folder (see ``data.resolve_image_folder``).
    With ``classes`` (the memory's), labels follow that class order."""
    probe = cfg.TEST.PROBE
    records, names = labelled_image_folder(resolve_image_folder(dataset))
    if classes is not None:
        records, names = align_classes(records, names, classes)
    records = evenly_spaced(records, max_images)
    shape = extractor.check([probe.IMAGE_FEATURE], "TEST.PROBE.IMAGE_FEATURE")[probe.IMAGE_FEATURE]

    def embed(batch):
        if not batch:
            return {"features": torch.zeros(0, shape.channels, device=extractor.device),
                    "labels": torch.zeros(0, dtype=torch.long), "image_index": torch.zeros(0, dtype=torch.long)}
        return {
            "features": image_embeddings(extractor, [b["image"] for b in batch], probe.IMAGE_FEATURE).float(),
            "labels": torch.tensor([b["label"] for b in batch]),
            "image_index": torch.tensor([b["index"] for b in batch]),
        }

    mapper = ImageProbeMapper(probe.IMAGE_RESIZE, probe.IMAGE_CROP, cfg.INPUT.FORMAT)
    with frozen(extractor.backbone):
        out = extract(records, mapper, embed, batch_size=probe.BATCH_SIZE, num_workers=probe.NUM_WORKERS,
                      progress=progress, desc=f"probe features {dataset}")
    return FeatureSet(out["features"], out["labels"], out["image_index"], names)


def extract_region_features(cfg, extractor: FeatureExtractor, dataset: str, *,
                            max_images: int = 0, progress: bool = True) -> FeatureSet:
    """RoIAlign features of every non-crowd ground-truth box of a detectron2 instance dataset."""
    probe = cfg.TEST.PROBE
    names = list(probe.REGION_FEATURES)
    pooler = _region_pooler(cfg, extractor)
    records, classes = instance_records(dataset)
    records = evenly_spaced(records, max_images)
    channels = extractor.output_shapes()[names[0]].channels

    def embed(batch):
        batch = [b for b in batch if len(b["boxes"])]
        if not batch:
            return {"features": torch.zeros(0, channels, device=extractor.device),
                    "labels": torch.zeros(0, dtype=torch.long), "image_index": torch.zeros(0, dtype=torch.long)}
        features = region_embeddings(extractor, [b["image"] for b in batch], [b["boxes"] for b in batch], names, pooler)
        return {
            "features": features.float(),
            "labels": torch.cat([b["labels"] for b in batch]),
            "image_index": torch.cat([torch.full((len(b["boxes"]),), b["index"]) for b in batch]),
        }

    mapper = RegionProbeMapper(probe.REGION_MIN_SIZE, probe.REGION_MAX_SIZE, cfg.INPUT.FORMAT, probe.MIN_BOX_SIZE)
    with frozen(extractor.backbone):
        out = extract(records, mapper, embed, batch_size=probe.BATCH_SIZE, num_workers=probe.NUM_WORKERS,
                      progress=progress, desc=f"probe boxes {dataset}")
    if len(out["features"]) == 0:
        raise ValueError(f"{dataset}: no box left after TEST.PROBE.MIN_BOX_SIZE {probe.MIN_BOX_SIZE}")
    return FeatureSet(out["features"], out["labels"], out["image_index"], classes)


# ---------------------------------------------------------------- classifiers
def evaluate_feature_sets(memory: FeatureSet, queries: FeatureSet, classifiers=CLASSIFIERS, *, k: int = 20,
                          temperature: float = 0.07, recipe: LinearProbeRecipe = LinearProbeRecipe()) -> dict:
    """``{classifier: (metrics, per_class)}`` of queries classified with the memory set."""
    if list(memory.class_names) != list(queries.class_names)[: len(memory.class_names)]:
        raise ValueError("memory and queries label their classes differently")
    unknown = [c for c in classifiers if c not in CLASSIFIERS]
    if unknown:
        raise ValueError(f"TEST.PROBE.CLASSIFIERS {unknown} unknown; choose from {CLASSIFIERS}")
    for name, feature_set in (("memory", memory), ("queries", queries)):
        if not torch.isfinite(feature_set.features).all():
            raise NonFiniteFeaturesError(
                f"the {name} features hold NaN/inf: the backbone's output is broken (in eval mode, e.g. BatchNorm "
                "running statistics that do not match the activations yet, early in training)")
    num_classes = len(queries.class_names)
    out = {}
    if "knn" in classifiers:
        ranked = knn_rank(memory.features, memory.labels, queries.features, num_classes, k, temperature)
        out["knn"] = classification_metrics(ranked, queries.labels, queries.class_names)
    if "linear" in classifiers:
        probe = train_linear_probe(memory.features, memory.labels, num_classes, recipe)
        ranked = rank_logits(probe.logits(queries.features))
        out["linear"] = classification_metrics(ranked, queries.labels, queries.class_names)
    return out


def _region_pooler(cfg, extractor: FeatureExtractor):
    probe = cfg.TEST.PROBE
    shapes = extractor.check(list(probe.REGION_FEATURES), "TEST.PROBE.REGION_FEATURES")
    return build_region_pooler(shapes, probe.POOLER_RESOLUTION, probe.POOLER_SAMPLING_RATIO, probe.POOLER_TYPE,
                               probe.LEVEL_ASSIGNMENT, probe.LEVEL_THRESHOLDS)


def configured_levels(cfg, extractor: FeatureExtractor) -> list[tuple[str, str, str]]:
    """``[(level, memory, queries)]`` of TEST.PROBE, every setting checked before any
    image is read (a wrong name fails in a second, not after the memory set's extraction)."""
    probe = cfg.TEST.PROBE
    levels = [("image", probe.IMAGE_MEMORY, probe.IMAGE_QUERIES), ("region", probe.REGION_MEMORY, probe.REGION_QUERIES)]
    levels = [level for level in levels if level[1] or level[2]]
    if not levels:
        raise ValueError(
            "TEST.PROBE has no dataset: set IMAGE_MEMORY/IMAGE_QUERIES and/or REGION_MEMORY/REGION_QUERIES"
        )
    unknown = [c for c in probe.CLASSIFIERS if c not in CLASSIFIERS]
    if unknown or not probe.CLASSIFIERS:
        raise ValueError(f"TEST.PROBE.CLASSIFIERS {list(probe.CLASSIFIERS)}: choose from {CLASSIFIERS}")
    for level, memory, queries in levels:
        if not (memory and queries):
            raise ValueError(f"TEST.PROBE.{level.upper()}_MEMORY and _QUERIES must be set together")
        if level == "image":
            extractor.check([probe.IMAGE_FEATURE], "TEST.PROBE.IMAGE_FEATURE")
            ImageProbeMapper(probe.IMAGE_RESIZE, probe.IMAGE_CROP)  # checks the sizes
            resolve_image_folder(memory), resolve_image_folder(queries)
        else:
            _region_pooler(cfg, extractor)
            missing = [name for name in (memory, queries) if name not in DatasetCatalog.list()]
            if missing:
                raise KeyError(f"TEST.PROBE region datasets {missing} are not registered detectron2 datasets")
    return levels


def check_probe_settings(cfg) -> None:
    """TEST.PROBE checked without reading an image: the datasets, features, sizes and
    classifiers ``run_probes`` would use with ``build_probe_model(cfg)`` (built on the
    meta device: no memory, no init cost).  Raises ``InputError`` ("TEST.PROBE: ...")."""
    try:
        with torch.device("meta"):
            model = build_probe_model(cfg, device="meta")
        configured_levels(cfg, extractor_from_cfg(cfg, model))
    except (ValueError, KeyError, FileNotFoundError) as err:
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise InputError(f"TEST.PROBE: {text}") from None


def run_probes(cfg, model_or_backbone: nn.Module, *, progress: bool = True) -> ProbeResults:
    """Every probe TEST.PROBE configures, on the frozen backbone (its train/eval mode is
    restored afterwards).  Call on every rank: extraction is split over the ranks, the
    classifiers run on every rank on the gathered features, and the results are
    identical everywhere."""
    probe = cfg.TEST.PROBE
    extractor = extractor_from_cfg(cfg, model_or_backbone)
    levels = configured_levels(cfg, extractor)
    settings = dict(k=probe.K, temperature=probe.TEMPERATURE, recipe=_recipe(cfg))
    results = ProbeResults()
    for level, memory_name, query_name in levels:
        if level == "image":
            memory = extract_image_features(cfg, extractor, memory_name, max_images=probe.MAX_MEMORY_IMAGES,
                                            progress=progress)
            queries = extract_image_features(cfg, extractor, query_name, memory.class_names,
                                             max_images=probe.MAX_QUERY_IMAGES, progress=progress)
        else:
            memory = extract_region_features(cfg, extractor, memory_name, max_images=probe.MAX_MEMORY_IMAGES,
                                             progress=progress)
            queries = extract_region_features(cfg, extractor, query_name, max_images=probe.MAX_QUERY_IMAGES,
                                              progress=progress)
            if memory.class_names != queries.class_names:
                raise ValueError(f"{memory_name} and {query_name} have different thing_classes")
        for classifier, (metrics, per_class) in evaluate_feature_sets(
            memory, queries, probe.CLASSIFIERS, **settings
        ).items():
            results.add(query_name, f"{level}_{classifier}", metrics, per_class)
            logger.info("probe %s_%s on %s (memory %s: %d, queries %d): top1 %.2f, mean class acc %.2f",
                        level, classifier, query_name, memory_name, len(memory.labels), len(queries.labels),
                        metrics["top1"], metrics["mean_class_acc"])
    comm.synchronize()
    return results
