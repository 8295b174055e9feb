"""SoCo (Wei et al., NeurIPS 2021): object-level BYOL on selective-search boxes,
pooled with RoIAlign from the same backbone (+ FPN + box head) Mask R-CNN uses.

One meta-architecture covers the paper's variants, chosen by config:
SoCo_C4 (``MODEL.SOCO.REGION_HEAD "C4"``: RoIAlign 14x14 on res4, res5, average
pool), SoCo_FPN (``"FPN"``: RoIAlign 7x7 on P2-P5 with scale-aware level
assignment + detectron2's 4conv1fc ``FastRCNNConvFCHead``) and SoCo* (FPN with
a fourth view; the pairs come from the mapper).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads
from detectron2.modeling.roi_heads.box_head import build_box_head

from soco_d2.data.collate import RoIPlan, collate_soco

from ..encoder import build_encoder, shared_channels, zero_init_residual_
from ..heads import build_predictor, build_projector
from ..losses import soco_loss
from ..poolers import ScaleAwareROIPooler
from .base import SSLMetaArch

# soco_loss is -2 x the mean matched cosine; a pair's loss sums both directions
COSINE_TO_PAIR_LOSS = -4.0


class Res5Head(nn.Module):
    """SoCo_C4's region head: detectron2's res5 stage on the pooled res4 RoIs,
    then average pooling.  Named ``res5`` so it converts to Res5ROIHeads' ``res5``."""

    def __init__(self, res5: nn.Module):
        super().__init__()
        self.res5 = res5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res5(x).mean(dim=(2, 3))


@META_ARCH_REGISTRY.register()
class SoCo(SSLMetaArch):
    """For every view pair (V1, Vj) from the mapper, online predictions of one
    view's boxes regress the target projections of the same proposals in the
    other view, in both directions (``soco_loss``)."""

    @configurable
    def __init__(
        self,
        *,
        backbone,
        in_features,
        pooler: ScaleAwareROIPooler,
        box_head,
        projector,
        predictor,
        pool_all_levels: bool = False,
        pixel_mean,
        pixel_std,
        **metrics,
    ):
        super().__init__(pixel_mean=pixel_mean, pixel_std=pixel_std, **metrics)
        self.backbone = backbone
        self.in_features = list(in_features)
        self.pooler = pooler
        self.box_head = box_head
        self.projector = projector
        self.predictor = predictor
        self.pool_all_levels = pool_all_levels
        self.make_target(["backbone", "box_head", "projector"])

    @classmethod
    def from_config(cls, cfg):
        soco = cfg.MODEL.SOCO
        backbone = build_encoder(cfg)
        shapes = backbone.output_shape()
        in_channels = shared_channels(backbone, soco.IN_FEATURES, "MODEL.SOCO.IN_FEATURES")
        resolution = soco.POOLER_RESOLUTION
        pooler = ScaleAwareROIPooler(
            output_size=resolution,
            scales=tuple(1.0 / shapes[f].stride for f in soco.IN_FEATURES),
            sampling_ratio=soco.POOLER_SAMPLING_RATIO,
            pooler_type=soco.POOLER_TYPE,
            level_assignment=soco.LEVEL_ASSIGNMENT,
            thresholds=soco.LEVEL_THRESHOLDS if len(soco.IN_FEATURES) > 1 else (),
        )
        if soco.REGION_HEAD == "FPN":
            box_head = build_box_head(cfg, ShapeSpec(channels=in_channels, height=resolution, width=resolution))
            out_dim = box_head.output_shape.channels
        elif soco.REGION_HEAD == "C4":
            res5, out_dim = Res5ROIHeads._build_res5_block(cfg)
            box_head = Res5Head(res5)
        else:
            raise ValueError(f"MODEL.SOCO.REGION_HEAD must be 'FPN' or 'C4', got {soco.REGION_HEAD!r}")
        if cfg.MODEL.SSL.ZERO_INIT_RESIDUAL:
            zero_init_residual_(box_head)
        return {
            "backbone": backbone,
            "in_features": soco.IN_FEATURES,
            "pooler": pooler,
            "box_head": box_head,
            "projector": build_projector(cfg, out_dim),
            "predictor": build_predictor(cfg),
            "pool_all_levels": soco.POOL_ALL_LEVELS,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            **cls.metrics_kwargs(cfg),
        }

    @classmethod
    def accumulation_refusal(cls, cfg) -> str | None:
        return None  # per image: the mean matched cosine of its boxes; then the mean over images

    def collate(self, samples):
        return collate_soco(samples, self.pooler.level_rule)

    def pool_view(self, features: dict[str, torch.Tensor], plan: RoIPlan | None):
        """Every box of one view (all its pairs) pooled in one go: (T, C, R, R), or
        (L, T, C, R, R) with ``pool_all_levels``."""
        if plan is None:
            return None
        x = [features[f] for f in self.in_features]
        if self.pool_all_levels and len(x) > 1:
            return self.pooler.pool_all_levels(x, plan)
        return self.pooler.pool(x, plan)

    def region_embeddings(self, pooled, plan: RoIPlan, rows, batch_size: int, box_head, heads) -> torch.Tensor:
        """(B, K, D) embeddings of one box set of a view (``rows`` of its plan):
        region head and MLPs on the RoIs of that set alone (their own BN batch)."""
        start, stop = rows
        num_rois = stop - start
        if self.pool_all_levels and pooled.dim() == 5:
            # the official code's cost: the head sees every box on every level (level-major)
            embedded = self._run_heads(box_head(pooled[:, start:stop].flatten(0, 1)), heads)
            selected = plan.levels[start:stop] * num_rois + torch.arange(num_rois, device=embedded.device)
            embedded = embedded[selected]
        else:
            embedded = self._run_heads(box_head(pooled[start:stop]), heads)
        return embedded.view(batch_size, num_rois // batch_size, -1)

    @staticmethod
    def _run_heads(x, heads):
        for head in heads:
            x = head(x)
        return x

    def losses(self, batch):
        if batch["level_rule"] != self.pooler.level_rule:
            raise ValueError(f"the batch's boxes were assigned to levels by {batch['level_rule']}, but this model "
                             f"pools with {self.pooler.level_rule}: build the mapper from the model's config")
        num_views = len(batch["views"])
        batch_size = len(batch["image_ids"])
        divisibility = self.backbone.size_divisibility
        images = [self.view_images(batch, v, divisibility) for v in range(num_views)]
        online_features = [self.backbone(im) for im in images]
        plans = batch["roi_plans"]
        online_pooled = [self.pool_view(f, plan) for f, plan in zip(online_features, plans)]
        with torch.no_grad():
            target_pooled = [self.pool_view(self.target.backbone(im), plan) for im, plan in zip(images, plans)]

        online_heads = [self.projector] + ([self.predictor] if self.predictor is not None else [])
        target_heads = [self.target.projector]
        losses, cosines = {}, []
        for pair in batch["pairs"]:
            a, b = pair["views"]
            ids_a, ids_b = pair["ids"]
            rows_a, rows_b = pair["rows"]
            q_a = self.region_embeddings(online_pooled[a], plans[a], rows_a, batch_size, self.box_head, online_heads)
            q_b = self.region_embeddings(online_pooled[b], plans[b], rows_b, batch_size, self.box_head, online_heads)
            with torch.no_grad():
                z_a = self.region_embeddings(target_pooled[a], plans[a], rows_a, batch_size, self.target.box_head,
                                             target_heads)
                z_b = self.region_embeddings(target_pooled[b], plans[b], rows_b, batch_size, self.target.box_head,
                                             target_heads)
            loss = soco_loss(q_a, z_b, ids_a, ids_b) + soco_loss(q_b, z_a, ids_b, ids_a)
            losses[f"loss_soco_{a + 1}{b + 1}"] = loss
            cosines.append(loss.detach() / COSINE_TO_PAIR_LOSS)
        self.put_metrics(**{"soco/matched_cos": torch.stack(cosines).mean()})
        return losses
