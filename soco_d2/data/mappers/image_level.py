"""Image-level views (BYOL, MoCo-v2, DenseCL): independently augmented views, no boxes."""
from __future__ import annotations

from detectron2.config import configurable

from .base import MultiViewMapper
from .build import SSL_MAPPER_REGISTRY

__all__ = ["ImageLevelMapper"]


@SSL_MAPPER_REGISTRY.register()
class ImageLevelMapper(MultiViewMapper):
    """``{"image_id", "views"[, "photometric"]}``, one view per ``INPUT.SSL.VIEW_SIZES``
    entry (two for BYOL / MoCo-v2 / DenseCL).

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
    def from_config(cls, cfg):
        return cls.base_kwargs(cfg)

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict, image = self.open_image(dataset_dict)
        height, width = image.height, image.width
        geoms = self.geometry(self.sample_rects(height, width), self.sample_flips(), height, width)
        views = self.make_views(image, geoms)
        return {"image_id": str(dataset_dict["image_id"]), **self.finish_views(views, self.sample_photometry())}
