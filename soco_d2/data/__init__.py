"""Pretraining and transfer data: dataset registration, mappers, augmentations."""
from .datasets import get_pretrain_dicts, load_image_folder, register_image_folder, register_pretrain_datasets
from .demo import DEMO_CLASSES, ensure_demo_instances, register_demo_datasets
from .mappers import SSL_MAPPER_REGISTRY, build_ssl_mapper
from .subsets import register_coco_subset, register_coco_subset_from_ids, register_coco_subsets, register_subsets_in

register_demo_datasets()
register_pretrain_datasets()
register_coco_subsets()

__all__ = [
    "SSL_MAPPER_REGISTRY",
    "build_ssl_mapper",
    "DEMO_CLASSES",
    "ensure_demo_instances",
    "get_pretrain_dicts",
    "load_image_folder",
    "register_demo_datasets",
    "register_image_folder",
    "register_pretrain_datasets",
    "register_coco_subset",
    "register_coco_subset_from_ids",
    "register_coco_subsets",
    "register_subsets_in",
]
