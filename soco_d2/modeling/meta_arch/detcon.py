"""DetCon (Hénaff et al., ICCV 2021): contrastive detection on unsupervised masks.

``MODEL.DETCON.VARIANT`` picks the framework (docs/methods/detcon.md, Variants):

* "B" (BYOL): online backbone + projector + predictor; the target (EMA of
  backbone + projector, ``target.*``) gives the keys, without gradient.
* "S" (SimCLR): one backbone + projector for both views; the projections play
  both the query and the key role, gradients flow through both.

Per view: the segment-id map is downsampled to the feature grid by majority
vote, 16 ids are sampled among those present (shared by online and target),
each is mask-pooled, projected (and predicted), and ``detcon_loss`` contrasts
them against every mask of both views of every image of the global batch.

Pooled features (``MODEL.DETCON.IN_FEATURES``):

* ``["res5"]``: the paper (C5, stride 32, 7x7 at 224).
* FPN levels, e.g. ``["p2", "p3", "p4", "p5"]``: this project's detection-stack
  variant.  Each mask is pooled from one level, chosen by its area in the
  view's pixels, sqrt(#pixels), with SoCo's rule (``LEVEL_THRESHOLDS``
  [48, 96, 192]: <= 48 -> p2, <= 96 -> p3, <= 192 -> p4, else p5); the id map
  is majority-vote downsampled to that level's grid.  An id is "present" (can
  be sampled) when it owns a cell of its level's grid; a thin segment that owns
  none there is pooled from the finest level where it owns one.  So small segments,
  which vanish on the 7x7 C5 grid, are pooled from fine levels, and the FPN
  weights Mask R-CNN fine-tunes are pretrained too.
"""
from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..encoder import build_encoder, shared_channels
from ..gather import all_gather_no_grad, all_gather_with_grad
from ..heads import build_predictor, build_projector
from ..losses import detcon_loss_terms
from ..mask_pooling import majority_vote_ids, mask_levels, mask_pool, present_ids, sample_mask_ids
from .base import SSLMetaArch

VARIANTS = ("B", "S")


def contrast_across_processes(queries, keys, ids, temperature: float, local_negatives: bool, keys_need_grad: bool):
    """``detcon_loss_terms`` with the keys of every process as negatives.

    queries / keys: per view (B, K, D) of this process; ids: per view (B, K).  The
    keys are all-gathered in rank order (with gradient for DetCon-S, whose keys are
    its own projections) and this process's images sit at rows rank * B.  Averaged
    over processes (DDP's gradient mean), this is the single-process loss of the
    global batch."""
    gather = all_gather_with_grad if keys_need_grad else all_gather_no_grad
    gathered = [gather(k) for k in keys]
    offset = comm.get_rank() * queries[0].shape[0] if comm.get_world_size() > 1 else 0
    return detcon_loss_terms(
        queries[0], queries[1], gathered[0], gathered[1], ids[0], ids[1],
        temperature, local_negatives, target_offset=offset,
    )


@META_ARCH_REGISTRY.register()
class DetCon(SSLMetaArch):
    """DetCon-B / DetCon-S (see the module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        backbone,
        in_features,
        level_thresholds=(),
        projector,
        predictor=None,
        variant: str = "B",
        num_masks: int = 16,
        temperature: float = 0.1,
        local_negatives: bool = True,
        pixel_mean,
        pixel_std,
    ):
        super().__init__(pixel_mean=pixel_mean, pixel_std=pixel_std)
        if variant not in VARIANTS:
            raise ValueError(f"MODEL.DETCON.VARIANT must be one of {VARIANTS}, got {variant!r}")
        if variant == "B" and predictor is None:
            raise ValueError("DetCon-B needs a predictor (MODEL.SSL.PRED_HIDDEN_DIM > 0)")
        if len(in_features) > 1 and len(level_thresholds) != len(in_features) - 1:
            raise ValueError(f"{len(in_features)} pooled levels need {len(in_features) - 1} "
                             f"MODEL.DETCON.LEVEL_THRESHOLDS, got {list(level_thresholds)}")
        self.backbone = backbone
        self.in_features = list(in_features)
        self.level_thresholds = tuple(float(t) for t in level_thresholds) if len(in_features) > 1 else ()
        shapes = backbone.output_shape()
        self.strides = [shapes[f].stride for f in self.in_features]
        self.projector = projector
        self.predictor = predictor if variant == "B" else None
        self.variant = variant
        self.num_masks = int(num_masks)
        self.temperature = float(temperature)
        self.local_negatives = bool(local_negatives)
        if variant == "B":
            self.make_target(["backbone", "projector"])

    @classmethod
    def from_config(cls, cfg):
        detcon = cfg.MODEL.DETCON
        backbone = build_encoder(cfg)
        channels = shared_channels(backbone, detcon.IN_FEATURES, "MODEL.DETCON.IN_FEATURES")
        return {
            "backbone": backbone,
            "in_features": detcon.IN_FEATURES,
            "level_thresholds": detcon.LEVEL_THRESHOLDS,
            "projector": build_projector(cfg, channels),
            "predictor": build_predictor(cfg) if detcon.VARIANT == "B" else None,
            "variant": detcon.VARIANT,
            "num_masks": detcon.NUM_MASKS,
            "temperature": cfg.MODEL.SSL.TEMPERATURE,
            "local_negatives": detcon.LOCAL_NEGATIVES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    # ------------------------------------------------------------------ masks
    def mask_layout(self, id_maps: torch.Tensor, features: dict[str, torch.Tensor]):
        """Per level the (B, h, w) majority-vote owners, the (B, n) level of every id,
        and the (B, n) ids that can be sampled (owning a cell of their level's grid)."""
        num_ids = int(id_maps.max()) + 1
        owners = [
            majority_vote_ids(id_maps, features[f].shape[-2:], stride) for f, stride in zip(self.in_features, self.strides)
        ]
        if len(owners) == 1:
            levels = torch.zeros(id_maps.shape[0], num_ids, dtype=torch.long, device=id_maps.device)
        else:
            levels = mask_levels(id_maps, num_ids, self.level_thresholds)
        present = torch.stack([present_ids(o, num_ids) for o in owners])  # (L, B, n)
        if len(owners) > 1:  # an id owning no cell of its level's grid: the finest level where it owns one
            at_level = present.gather(0, levels[None]).squeeze(0)
            levels = torch.where(at_level, levels, present.long().argmax(dim=0))
        return owners, levels, present.any(dim=0)

    def pool(self, features: dict[str, torch.Tensor], owners, levels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, K, C): each sampled mask pooled from the level assigned to it."""
        pooled = [mask_pool(features[f], o, ids) for f, o in zip(self.in_features, owners)]
        if len(pooled) == 1:
            return pooled[0]
        level = levels.gather(1, ids)  # (B, K)
        stacked = torch.stack(pooled)  # (L, B, K, C); every level stays in the graph (DDP)
        return stacked.gather(0, level[None, :, :, None].expand(1, -1, -1, stacked.shape[-1])).squeeze(0)

    @staticmethod
    def _heads(x: torch.Tensor, heads) -> torch.Tensor:
        batch, num_masks, _ = x.shape
        x = x.reshape(batch * num_masks, -1)
        for head in heads:
            x = head(x)
        return x.view(batch, num_masks, -1)

    # ------------------------------------------------------------------ loss
    def losses(self, batched_inputs):
        divisibility = getattr(self.backbone, "size_divisibility", 0)
        images = [self.view_images(batched_inputs, v, divisibility) for v in range(2)]
        id_maps = [torch.stack([x["masks"][v] for x in batched_inputs]).to(self.device) for v in range(2)]

        online_heads = [self.projector] + ([self.predictor] if self.predictor is not None else [])
        queries, keys, ids, num_present = [], [], [], []
        for image, id_map in zip(images, id_maps):
            features = self.backbone(image)
            owners, levels, present = self.mask_layout(id_map, features)
            sampled = sample_mask_ids(present, self.num_masks)  # once per view, shared with the target
            ids.append(sampled)
            num_present.append(present.sum(dim=1).float().mean())
            if self.variant == "B":
                queries.append(self._heads(self.pool(features, owners, levels, sampled), online_heads))
                with torch.no_grad():
                    target_features = self.target.backbone(image)
                    keys.append(self._heads(self.pool(target_features, owners, levels, sampled), [self.target.projector]))
            else:
                projections = self._heads(self.pool(features, owners, levels, sampled), online_heads)
                queries.append(projections)
                keys.append(projections)

        loss_12, loss_21 = contrast_across_processes(
            queries, keys, ids, self.temperature, self.local_negatives, keys_need_grad=self.variant == "S"
        )
        with torch.no_grad():
            matched = (ids[0][:, :, None] == ids[1][:, None, :]).any(dim=2).float().mean()
        storage = get_event_storage()
        storage.put_scalar("detcon/masks_present", torch.stack(num_present).mean().item())
        storage.put_scalar("detcon/matched_fraction", matched.item())
        return {"loss_detcon_12": loss_12, "loss_detcon_21": loss_21}
