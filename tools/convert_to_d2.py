#!/usr/bin/env python
"""Convert pretrained checkpoints (ours, official SoCo / DenseCL / MoCo, DetCon's
Haiku .npy, torchvision ResNets) into detectron2's model-zoo .pkl, or into a
torchvision ResNet state dict.  ``--help`` lists formats and options."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import soco_d2  # noqa: E402,F401  (compat shims before any detectron2 import)
from soco_d2.checkpoint.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
