"""Weights in and out: the safe reader every tool uses, the checkpointer of every
run (safe reads, atomic writes), loading with a missing-key report, and the
conversion of our and the official SoCo, DenseCL, MoCo, DetCon (Haiku) and
torchvision ResNet weights to detectron2's model-zoo pickle (CLI:
``tools/convert_to_d2.py``).

``read_weights(path, unsafe_load=False)`` is the one public safe-loading API:
``.pkl`` through a restricted unpickler, ``.pth`` through
``torch.load(weights_only=True)``; ``--unsafe-load`` (``UNSAFE_LOAD_FLAG``) is
the opt-out every tool offers.
"""
from .checkpointer import SafeCheckpointer, last_good_checkpoint
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
from .errors import UNSAFE_LOAD_FLAG, ConversionError, WeightsFileError
from .formats import FORMATS, detect_format
from .loading import (
    UnconvertedWeightsError,
    group_sizes,
    load_pretrained_weights,
    load_with_report,
    missing_by_group,
    model_group,
)
from .safe_load import read_weights

__all__ = [
    "FINE_TUNE_HINT",
    "FORMATS",
    "GROUPS",
    "UNSAFE_LOAD_FLAG",
    "ConversionError",
    "ConversionResult",
    "SafeCheckpointer",
    "UnconvertedWeightsError",
    "WeightsFileError",
    "convert_checkpoint",
    "detect_format",
    "group_sizes",
    "last_good_checkpoint",
    "load_pretrained_weights",
    "load_with_report",
    "missing_by_group",
    "model_group",
    "parse_include",
    "read_weights",
    "save_d2",
    "save_torchvision",
    "to_torchvision",
]
