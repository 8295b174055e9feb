"""BYOL (Grill et al. 2020): the image-level baseline of SoCo and DetCon-B."""
from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..encoder import build_encoder
from ..heads import build_predictor, build_projector
from ..losses import byol_loss
from .base import SSLMetaArch


@META_ARCH_REGISTRY.register()
class BYOL(SSLMetaArch):
    """Online encoder -> global average pool -> projector -> predictor, regressed
    onto the momentum target's projection of the other view, both directions."""

    @configurable
    def __init__(self, *, backbone, feature, projector, predictor, pixel_mean, pixel_std, **metrics):
        super().__init__(pixel_mean=pixel_mean, pixel_std=pixel_std, **metrics)
        self.backbone = backbone
        self.feature = feature
        self.projector = projector
        self.predictor = predictor
        self.make_target(["backbone", "projector"])

    @classmethod
    def from_config(cls, cfg):
        backbone = build_encoder(cfg)
        feature = cfg.MODEL.SSL.FEATURE
        return {
            "backbone": backbone,
            "feature": feature,
            "projector": build_projector(cfg, backbone.output_shape()[feature].channels),
            "predictor": build_predictor(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            **cls.metrics_kwargs(cfg),
        }

    @classmethod
    def accumulation_refusal(cls, cfg) -> str | None:
        return None  # the mean over images of 2 - 2 cos

    def embed(self, backbone, images: torch.Tensor) -> torch.Tensor:
        return backbone(images)[self.feature].mean(dim=(2, 3))

    def losses(self, batch):
        views = [self.view_images(batch, i) for i in range(2)]
        online = [self.predictor(self.projector(self.embed(self.backbone, v))) for v in views]
        with torch.no_grad():
            target = [self.target.projector(self.embed(self.target.backbone, v)) for v in views]
        losses = {"loss_byol_12": byol_loss(online[0], target[1]), "loss_byol_21": byol_loss(online[1], target[0])}
        # each term is 2 - 2 cos: the mean cosine of the two directions
        self.put_metrics(**{"byol/cos_sim": 1.0 - 0.5 * (losses["loss_byol_12"] + losses["loss_byol_21"]).detach() / 2})
        return losses
