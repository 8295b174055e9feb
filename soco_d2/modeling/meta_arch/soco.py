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
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage

from ..encoder import build_encoder, shared_channels, zero_init_residual_
from ..heads import build_predictor, build_projector
from ..losses import soco_loss
from ..poolers import ScaleAwareROIPooler
from .base import SSLMetaArch


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
    ):
        super().__init__(pixel_mean=pixel_mean, pixel_std=pixel_std)
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
        }

    def region_embeddings(self, features, box_lists, box_head, heads) -> torch.Tensor:
        """(B, K, D) embeddings of each image's K boxes: RoIAlign, region head, MLPs."""
        x = [features[f] for f in self.in_features]
        num_boxes = len(box_lists[0])
        if any(len(b) != num_boxes for b in box_lists):
            raise ValueError("every image must carry the same number of boxes per view (the mapper pads them)")
        if self.pool_all_levels and len(x) > 1:
            embedded = self._run_heads(box_head(self.pooler.forward_all_levels(x, box_lists)), heads)
            total = sum(len(b) for b in box_lists)
            rows = self.pooler.levels(box_lists) * total + torch.arange(total, device=embedded.device)
            embedded = embedded[rows]
        else:
            embedded = self._run_heads(box_head(self.pooler(x, box_lists)), heads)
        return embedded.view(len(box_lists), num_boxes, -1)

    @staticmethod
    def _run_heads(x, heads):
        for head in heads:
            x = head(x)
        return x

    def losses(self, batched_inputs):
        num_views = len(batched_inputs[0]["views"])
        divisibility = self.backbone.size_divisibility
        images = [self.view_images(batched_inputs, v, divisibility) for v in range(num_views)]
        online_features = [self.backbone(im) for im in images]
        with torch.no_grad():
            target_features = [self.target.backbone(im) for im in images]

        online_heads = [self.projector] + ([self.predictor] if self.predictor is not None else [])
        target_heads = [self.target.projector]
        losses, cosines = {}, []
        for p, pair in enumerate(batched_inputs[0]["pairs"]):
            a, b = pair["views"]
            boxes = [[Boxes(x["pairs"][p]["boxes"][side].to(self.device)) for x in batched_inputs] for side in (0, 1)]
            ids = [torch.stack([x["pairs"][p]["ids"][side] for x in batched_inputs]).to(self.device) for side in (0, 1)]
            q_a = self.region_embeddings(online_features[a], boxes[0], self.box_head, online_heads)
            q_b = self.region_embeddings(online_features[b], boxes[1], self.box_head, online_heads)
            with torch.no_grad():
                z_a = self.region_embeddings(target_features[a], boxes[0], self.target.box_head, target_heads)
                z_b = self.region_embeddings(target_features[b], boxes[1], self.target.box_head, target_heads)
            loss = soco_loss(q_a, z_b, ids[0], ids[1]) + soco_loss(q_b, z_a, ids[1], ids[0])
            losses[f"loss_soco_{a + 1}{b + 1}"] = loss
            cosines.append(-loss.detach() / 4.0)
        get_event_storage().put_scalar("soco/matched_cos", torch.stack(cosines).mean().item())
        return losses
