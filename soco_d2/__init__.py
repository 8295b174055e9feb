"""soco_d2: detection-aligned self-supervised pretraining (SoCo, DetCon, DenseCL,
BYOL, MoCo-v2) as detectron2 plugins, and their transfer to Mask R-CNN.

Importing this package first applies the detectron2 compatibility shims
(``soco_d2.compat``), then registers the plugin's datasets and models.  Every
entry point imports ``soco_d2`` before any ``detectron2`` module.
"""
from . import compat as _compat

try:
    _compat.apply()
except ImportError as _err:  # detectron2 missing: one clear message, no chained traceback
    raise ImportError(str(_err)) from None

from .config import add_pretrain_config, get_pretrain_cfg  # noqa: E402
from . import data  # noqa: E402,F401  (registers the datasets)
from . import modeling  # noqa: E402,F401  (registers the meta-architectures)

_compat.apply_after_import()

__version__ = "0.1.0"
__all__ = ["add_pretrain_config", "get_pretrain_cfg", "__version__"]
