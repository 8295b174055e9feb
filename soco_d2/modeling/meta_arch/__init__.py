"""One module per method; importing this package registers them all in
detectron2's META_ARCH_REGISTRY."""
from .base import SSLMetaArch
from .byol import BYOL
from .densecl import DenseCL
from .detcon import DetCon
from .moco import MoCoV2
from .soco import SoCo

__all__ = ["SSLMetaArch", "BYOL", "DenseCL", "DetCon", "MoCoV2", "SoCo"]
