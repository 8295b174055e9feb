"""Pretraining and transfer data: dataset registration, mappers, augmentations."""
from .checks import check_pretrain_caches
from .datasets import get_pretrain_dicts, load_image_folder, register_image_folder, register_pretrain_datasets
from .demo import DEMO_CLASSES, ensure_demo_instances, register_demo_datasets
from .mappers import SSL_MAPPER_REGISTRY, build_ssl_mapper

register_demo_datasets()
register_pretrain_datasets()

__all__ = [
    "SSL_MAPPER_REGISTRY",
    "build_ssl_mapper",
    "check_pretrain_caches",
    "DEMO_CLASSES",
    "ensure_demo_instances",
    "get_pretrain_dicts",
    "load_image_folder",
    "register_demo_datasets",
    "register_image_folder",
    "register_pretrain_datasets",
]
