"""Start-up checks of the pretraining data, run in the main process before a
model is built: a wrong input fails in seconds with one message instead of
deep inside a dataloader worker after the model was built."""
from __future__ import annotations

from .build import load_pretrain_dicts
from .mappers import LazyCache, build_ssl_mapper


def check_pretrain_caches(cfg, dataset_dicts=None, mapper=None) -> None:
    """Every proposal / mask cache the pretraining mapper will read must hold the
    right kind (boxes for ``PROPOSALS.BOX_CACHE``, label maps for
    ``PROPOSALS.MASK_CACHE``) and every image of ``DATASETS.TRAIN``; raises
    ``soco_d2.proposals.cache.CacheError`` otherwise.

    ``dataset_dicts`` / ``mapper``: the run's own, when already made (the
    dataset is listed only when some cache needs checking).
    """
    mapper = mapper if mapper is not None else build_ssl_mapper(cfg)
    caches = [v for v in vars(mapper).values() if isinstance(v, LazyCache)]
    if not caches:
        return
    if dataset_dicts is None:
        dataset_dicts = load_pretrain_dicts(cfg.DATASETS.TRAIN)
    name = ", ".join(cfg.DATASETS.TRAIN)
    for cache in caches:
        cache.check(dataset_dicts, dataset_name=name)
