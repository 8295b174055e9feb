"""Checkpoint conversion: our pretraining checkpoints and the official SoCo,
DenseCL, MoCo, DetCon (Haiku) and torchvision ResNet weights -> detectron2's
model-zoo pickle (or a torchvision ResNet state dict).  CLI:
``tools/convert_to_d2.py``."""
from .convert import (
    FINE_TUNE_HINT,
    GROUPS,
    ConversionResult,
    convert_checkpoint,
    parse_include,
    save_d2,
    save_torchvision,
    to_torchvision,
)
from .errors import ConversionError
from .formats import FORMATS, detect_format
from .loading import group_sizes, load_with_report, missing_by_group, model_group
from .safe_load import load_file

__all__ = [
    "FINE_TUNE_HINT",
    "FORMATS",
    "GROUPS",
    "ConversionError",
    "ConversionResult",
    "convert_checkpoint",
    "detect_format",
    "group_sizes",
    "load_file",
    "load_with_report",
    "missing_by_group",
    "model_group",
    "parse_include",
    "save_d2",
    "save_torchvision",
    "to_torchvision",
]
