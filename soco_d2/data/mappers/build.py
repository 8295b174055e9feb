"""The registry of pretraining (multi-view) mappers, chosen by ``INPUT.SSL.MAPPER``."""
from __future__ import annotations

from detectron2.utils.registry import Registry

SSL_MAPPER_REGISTRY = Registry("SSL_MAPPER")
SSL_MAPPER_REGISTRY.__doc__ = """
Registry of self-supervised pretraining mappers (``SoCoMapper``, ``ImageLevelMapper``,
``DetConMapper``).  Each is a callable ``mapper(dataset_dict) -> dict`` built as
``Mapper(cfg)`` (``@configurable``), with a ``collate(list of outputs) -> batch``;
the formats are in ``soco_d2.data.mappers``' and ``soco_d2.data.collate``'s docstrings.
"""


def build_ssl_mapper(cfg):
    """The mapper named by ``cfg.INPUT.SSL.MAPPER``, built from ``cfg``."""
    return SSL_MAPPER_REGISTRY.get(cfg.INPUT.SSL.MAPPER)(cfg)
