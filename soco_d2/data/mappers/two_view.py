"""Image-level views (BYOL, MoCo-v2, DenseCL): N independently augmented views, no boxes."""
from __future__ import annotations

from detectron2.config import configurable

from .base import MultiViewMapper
from .build import SSL_MAPPER_REGISTRY

__all__ = ["TwoViewMapper"]


@SSL_MAPPER_REGISTRY.register()
class TwoViewMapper(MultiViewMapper):
    """``{"image_id", "views": [float32 (3, S, S) RGB 0..255]}``, one view per
    ``INPUT.SSL.VIEW_SIZES`` entry (two for BYOL / MoCo-v2 / DenseCL).

    Recipes (INPUT.SSL): BYOL ``CROP_SCALE (0.08, 1)``, ``COLOR_JITTER (0.4, 0.4,
    0.2, 0.1)``, ``BLUR_PROBS [1.0, 0.1]``, ``SOLARIZE_PROBS [0.0, 0.2]``;
    MoCo-v2 / DenseCL ``CROP_SCALE (0.2, 1)``, ``COLOR_JITTER (0.4, 0.4, 0.4,
    0.1)``, ``BLUR_PROBS [0.5]``, ``SOLARIZE_PROBS [0.0]``; all with
    ``JITTER_PROB 0.8``, ``GRAYSCALE_PROB 0.2``, flip 0.5, bilinear.
    """

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        kwargs = cls.base_kwargs(cfg)
        kwargs["is_train"] = is_train
        return kwargs

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict, image = self.read_image(dataset_dict)
        height, width = image.shape[:2]
        geoms = self.geometry(self.sample_rects(height, width), self.sample_flips(), height, width)
        return {"image_id": str(dataset_dict["image_id"]), "views": self.colorize(self.render(image, geoms))}
