"""Pretraining and transfer data: dataset registration, mappers, augmentations."""
from .demo import DEMO_CLASSES, ensure_demo_instances, register_demo_datasets

register_demo_datasets()

__all__ = ["DEMO_CLASSES", "ensure_demo_instances", "register_demo_datasets"]
