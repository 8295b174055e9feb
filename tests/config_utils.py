"""Where the tests find configs: ours through the library's ``soco_d2.model_zoo``,
detectron2's own model-zoo yamls from its installed package."""
import os

import soco_d2  # noqa: F401  (compat shims before detectron2)
from soco_d2.model_zoo import configs_root, get_config_file


def project_config_path(name: str) -> str:
    """A config of this repository (``configs/<name>``; globs allowed for listing)."""
    return os.path.join(configs_root(), name) if any(c in name for c in "*?[") else get_config_file(name)


def model_zoo_config_path(name: str) -> str:
    """Absolute path of a yaml in detectron2's installed model zoo (without ``detectron2.model_zoo``
    and its pkg_resources import), e.g. ``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml``."""
    import detectron2

    path = os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs", name)
    assert os.path.isfile(path), f"{name} is not in detectron2's installed model zoo ({os.path.dirname(path)})"
    return path
