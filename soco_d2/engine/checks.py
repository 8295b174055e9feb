"""Fail early: every input a run needs is checked before any model is built.

Each check raises :class:`soco_d2.errors.InputError` with one message that says
what is wrong, where it was looked for and how to fix it.

* :func:`list_pretrain_dataset` lists ``DATASETS.TRAIN`` once (the epoch
  schedule, these checks and the train loader share the dicts);
* :func:`check_pretrain_inputs` ``(cfg, dataset_dicts)`` is *the* start-up
  validation of a pretraining run's data: registered names, every proposal
  / mask cache the mapper reads (it exists, holds the kind the mapper reads and
  the dataset's image ids; else the exact ``precompute_proposals.py`` command),
  ``SOLVER.AMP.DTYPE`` and ``SOLVER.ACCUMULATE_STEPS`` (only where exact).  Extend it by
  adding checks to ``PRETRAIN_CHECKS`` or to :func:`check_cache`;
* :func:`check_dataset`: a detectron2 (transfer) dataset's files are where
  detectron2 looks for them;
* :func:`check_weights`: the weights the run loads (``MODEL.WEIGHTS``, or the
  ``--resume`` checkpoint) exist and read safely.
"""
from __future__ import annotations

import logging
import os
import shlex

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY

from ..checkpoint.safe_load import read_weights
from ..data import SSL_MAPPER_REGISTRY
from ..data.build import load_pretrain_dicts
from ..data.datasets import datasets_root
from ..errors import InputError
from ..evaluation.probe import check_probe_settings
from ..proposals.cache import CacheCorruptError
from ..proposals.verify import check_cache as verify_cache_fits
from . import steps

logger = logging.getLogger(__name__)

# The caches each mapper reads: (INPUT.SSL.MAPPER, when, config key, precompute --method).
MAPPER_CACHES = (
    ("SoCoMapper", lambda cfg: True, "BOX_CACHE", "selective_search"),
    ("DetConMapper", lambda cfg: cfg.MODEL.DETCON.MASK_SOURCE == "fh", "MASK_CACHE", "felzenszwalb"),
)
PRECOMPUTE = "python tools/precompute_proposals.py"  # installed: soco-d2-precompute


def list_pretrain_dataset(cfg) -> list[dict]:
    """The dataset dicts of ``DATASETS.TRAIN`` (listed once per process), or a clear error."""
    try:
        return load_pretrain_dicts(cfg.DATASETS.TRAIN)
    except (KeyError, FileNotFoundError, ValueError, OSError) as err:
        text = (err.args[0] if isinstance(err, KeyError) and err.args else str(err)).replace("\n", " ")
        raise InputError(f"DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)}: {text} "
                         f"($DETECTRON2_DATASETS = {os.path.abspath(datasets_root())})") from None


def check_registered_names(cfg, dataset_dicts=None) -> None:
    for key, registry, name in (("MODEL.META_ARCHITECTURE", META_ARCH_REGISTRY, cfg.MODEL.META_ARCHITECTURE),
                                ("INPUT.SSL.MAPPER", SSL_MAPPER_REGISTRY, cfg.INPUT.SSL.MAPPER)):
        if name not in registry:
            raise InputError(f"{key} {name!r} is not registered; registered: {', '.join(sorted(k for k, _ in registry))}")


def precompute_command(cfg, method: str, output: str) -> str:
    names = list(cfg.DATASETS.TRAIN)
    commands = [f"{PRECOMPUTE} --dataset {shlex.quote(n)} --method {method} --output {shlex.quote(output)}"
                for n in names]
    if len(commands) == 1:
        return commands[0]
    return ("one cache must hold the images of every DATASETS.TRAIN entry; precompute each, e.g. "
            + "; ".join(commands))


def check_cache(cfg, dataset_dicts, key: str, method: str) -> None:
    """``PROPOSALS.<key>`` exists, holds the kind the mapper reads (boxes / masks) and every
    image id of ``dataset_dicts`` (``soco_d2.proposals.verify.check_cache``: header and index
    only; a damaged file is reported as unreadable)."""
    path = cfg.PROPOSALS[key]
    kind = "box" if key == "BOX_CACHE" else "mask"
    command = precompute_command(cfg, method, path or f"proposals/<dataset>_{'ss' if method == 'selective_search' else 'fh'}.pcache")
    if not path:
        raise InputError(f"{cfg.INPUT.SSL.MAPPER} needs a {kind} cache: set PROPOSALS.{key} to a cache made with: {command}")
    if not os.path.isfile(path):
        raise InputError(f"PROPOSALS.{key} {path!r} does not exist ({os.path.abspath(path)}); make it with: {command}")
    try:
        verify_cache_fits(path, f"{kind}es" if kind == "box" else f"{kind}s", dataset_dicts, key=f"PROPOSALS.{key}",
                          allow_missing=cfg.PROPOSALS.MISSING == "whole_image",
                          dataset_name=", ".join(cfg.DATASETS.TRAIN))
    except (CacheCorruptError, OSError) as err:
        raise InputError(f"PROPOSALS.{key} {path!r} cannot be read ({err}); make it again with: {command}") from None


def check_caches(cfg, dataset_dicts) -> None:
    for mapper, when, key, method in MAPPER_CACHES:
        if cfg.INPUT.SSL.MAPPER == mapper and when(cfg):
            check_cache(cfg, dataset_dicts, key, method)


def check_amp_dtype(cfg, dataset_dicts=None) -> None:
    steps.check_amp_dtype(cfg)


def check_accumulation(cfg, dataset_dicts=None) -> None:
    """``SOLVER.ACCUMULATE_STEPS`` divides the batch, and the method's loss allows it
    (the meta-architecture's ``accumulation_refusal``; docs/tools/pretrain_net.md, Gradient accumulation)."""
    accumulate = cfg.SOLVER.ACCUMULATE_STEPS
    if not isinstance(accumulate, int) or accumulate < 1:
        raise InputError(f"SOLVER.ACCUMULATE_STEPS must be a whole number >= 1, got {accumulate!r}")
    if accumulate == 1:
        return
    if cfg.SOLVER.IMS_PER_BATCH % accumulate:
        raise InputError(f"SOLVER.ACCUMULATE_STEPS {accumulate} does not divide SOLVER.IMS_PER_BATCH "
                         f"{cfg.SOLVER.IMS_PER_BATCH} (the images of one optimizer step)")
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    refusal = arch.accumulation_refusal(cfg) if hasattr(arch, "accumulation_refusal") else (
        f"{arch.__name__} is not a soco_d2 pretraining method")
    if refusal:
        raise InputError(f"SOLVER.ACCUMULATE_STEPS {accumulate} would not give the step of the whole batch: {refusal}. "
                         "Use SOLVER.ACCUMULATE_STEPS 1 (more processes, or a smaller SOLVER.IMS_PER_BATCH with "
                         "the learning rate scaled)")


def check_probes(cfg, dataset_dicts=None) -> None:
    """With the probe hook on (TEST.PROBE.ENABLED): its datasets, features and classifiers."""
    if cfg.TEST.PROBE.ENABLED:
        check_probe_settings(cfg)


PRETRAIN_CHECKS = [check_registered_names, check_caches, check_amp_dtype, check_accumulation, check_probes]


def check_pretrain_inputs(cfg, dataset_dicts) -> None:
    """The start-up validation of a pretraining run's data (see the module docstring)."""
    for check in PRETRAIN_CHECKS:
        check(cfg, dataset_dicts)


def check_weights_file(weights: str, key: str = "MODEL.WEIGHTS", unsafe_load: bool = False) -> None:
    """``weights`` exists and reads safely (the same reader the load uses: a file that holds
    code is refused here, before anything is built or written); ``""`` is random init."""
    if not weights or "://" in weights:  # random init, or detectron2's PathManager resolves it
        return
    if not os.path.isfile(weights):
        what = "is a folder" if os.path.isdir(weights) else "does not exist"
        raise InputError(f"{key} {weights!r} {what} ({os.path.abspath(weights)})")
    if os.path.getsize(weights) == 0:
        raise InputError(f"{key} {weights!r} is empty")
    if not unsafe_load:
        read_weights(weights)


def check_weights(cfg, args) -> None:
    """The weights a run will load: OUTPUT_DIR's last checkpoint with ``--resume`` (when there is
    one), else ``MODEL.WEIGHTS``."""
    unsafe = getattr(args, "unsafe_load", False)
    last = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    if getattr(args, "resume", False) and os.path.isfile(last):
        with open(last) as f:
            check_weights_file(os.path.join(cfg.OUTPUT_DIR, f.read().strip()), "--resume: last_checkpoint", unsafe)
    else:
        check_weights_file(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS", unsafe)


# metadata keys of detectron2's builtin datasets that name files or folders
_DATASET_PATHS = ("json_file", "image_root", "dirname", "image_dir", "gt_dir", "panoptic_root", "sem_seg_root")


def check_dataset(name: str) -> None:
    """A detectron2 dataset is registered and its files are where detectron2 looks for them."""
    if name not in DatasetCatalog.list():
        raise InputError(f"dataset {name!r} is not registered (registered: {len(DatasetCatalog.list())} names, "
                         "e.g. coco_2017_train, voc_2007_test, cityscapes_fine_instance_seg_val, demo_instances_train)")
    meta = MetadataCatalog.get(name)
    missing = [getattr(meta, k) for k in _DATASET_PATHS if hasattr(meta, k) and not os.path.exists(getattr(meta, k))]
    if not missing:
        return
    try:  # some datasets are made on first use (the demo sets): loading them makes them
        DatasetCatalog.get(name)
    except Exception as err:  # noqa: BLE001  (any loader failure: the message names the missing files)
        raise InputError(f"dataset {name!r} not found: {', '.join(os.path.abspath(p) for p in missing)} missing "
                         f"($DETECTRON2_DATASETS = {os.path.abspath(datasets_root())}; README 'Datasets' shows "
                         f"the layout) [{type(err).__name__}]") from None
