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
The downsampling and the sampling happen in the mapper, on the CPU
(``soco_d2.data.masks.MaskGrids``, built from the same ``MODEL.DETCON`` keys).

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

from soco_d2.data.collate import collate_detcon
from soco_d2.data.masks import MaskGrids

from ..encoder import build_encoder, shared_channels
from ..gather import all_gather_no_grad, all_gather_with_grad
from ..heads import build_predictor, build_projector
from ..losses import detcon_loss_terms
from ..mask_pooling import pool_masks
from .base import SSLMetaArch

VARIANTS = ("B", "S")


def contrast_across_processes(queries, keys, ids, temperature: float, local_negatives: bool, keys_need_grad: bool,
                              cross_image_negatives: bool = True):
    """``detcon_loss_terms`` with the keys of every process as negatives.

    queries / keys: per view (B, K, D) of this process; ids: per view (B, K).  The
    keys are all-gathered in rank order (with gradient for DetCon-S, whose keys are
    its own projections) and this process's images sit at rows rank * B.  Averaged
    over processes (DDP's gradient mean), this is the single-process loss of the
    global batch.  Without ``cross_image_negatives`` nothing is gathered: each
    image contrasts against its own masks only."""
    if not cross_image_negatives:
        return detcon_loss_terms(queries[0], queries[1], keys[0], keys[1], ids[0], ids[1], temperature,
                                 local_negatives, cross_image_negatives=False)
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
        cross_image_negatives: bool = True,
        pixel_mean,
        pixel_std,
        **metrics,
    ):
        super().__init__(pixel_mean=pixel_mean, pixel_std=pixel_std, **metrics)
        if variant not in VARIANTS:
            raise ValueError(f"MODEL.DETCON.VARIANT must be one of {VARIANTS}, got {variant!r}")
        if not cross_image_negatives and not local_negatives:
            raise ValueError("MODEL.DETCON.CROSS_IMAGE_NEGATIVES False needs MODEL.DETCON.LOCAL_NEGATIVES True: "
                             "without either a query has no negative")
        if variant == "B" and predictor is None:
            raise ValueError("DetCon-B needs a predictor (MODEL.SSL.PRED_HIDDEN_DIM > 0)")
        self.backbone = backbone
        self.in_features = list(in_features)
        # the mapper's grids (MaskGrids) read strides from the feature names: they must be the backbone's
        self.grids = MaskGrids(self.in_features, level_thresholds, num_masks)
        shapes = backbone.output_shape()
        self.strides = [shapes[f].stride for f in self.in_features]
        if self.strides != self.grids.strides:
            raise ValueError(f"MODEL.DETCON.IN_FEATURES {self.in_features} have strides {self.strides}, "
                             f"not the {self.grids.strides} their names say")
        self.level_thresholds = self.grids.thresholds
        self.projector = projector
        self.predictor = predictor if variant == "B" else None
        self.variant = variant
        self.num_masks = int(num_masks)
        self.temperature = float(temperature)
        self.local_negatives = bool(local_negatives)
        self.cross_image_negatives = bool(cross_image_negatives)
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
            "cross_image_negatives": detcon.CROSS_IMAGE_NEGATIVES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            **cls.metrics_kwargs(cfg),
        }

    @classmethod
    def accumulation_refusal(cls, cfg) -> str | None:
        if not cfg.MODEL.DETCON.CROSS_IMAGE_NEGATIVES:
            return None  # per image: its queries against its own masks; then the mean over images
        return ("DetCon contrasts every mask with the masks of every other image of the global batch: "
                "a slice of IMS_PER_BATCH / ACCUMULATE_STEPS images has fewer negatives and its own softmax "
                "normalisation, so the slices' losses do not add up to the batch's "
                "(MODEL.DETCON.CROSS_IMAGE_NEGATIVES False keeps only the own image's negatives and is exact)")

    def collate(self, samples):
        return collate_detcon(samples)

    # ------------------------------------------------------------------ masks
    def check_masks(self, masks: dict, view_size: tuple[int, int]) -> None:
        """The mapper's grids must be the model's (shapes only: nothing is read from the device)."""
        if len(masks["owners"]) != len(self.in_features) or masks["ids"].shape[1] != self.num_masks:
            raise ValueError(f"the batch's masks are laid out for {len(masks['owners'])} levels and "
                             f"{masks['ids'].shape[1]} masks; the model pools {len(self.in_features)} levels and "
                             f"{self.num_masks} masks: build the mapper from the model's config")
        for level, owners in enumerate(masks["owners"]):
            expected = self.grids.grid(view_size[0], view_size[1], level)
            if tuple(owners.shape[1:]) != expected:
                raise ValueError(f"mask grid {tuple(owners.shape[1:])} on {self.in_features[level]}, expected "
                                 f"{expected} for {view_size[0]}x{view_size[1]} views")

    def pool(self, features: dict[str, torch.Tensor], masks: dict) -> torch.Tensor:
        """(B, K, C): each sampled mask pooled from the level assigned to it."""
        return pool_masks([features[f] for f in self.in_features], masks["owners"], masks["ids"], masks["levels"])

    @staticmethod
    def _heads(x: torch.Tensor, heads) -> torch.Tensor:
        batch, num_masks, _ = x.shape
        x = x.reshape(batch * num_masks, -1)
        for head in heads:
            x = head(x)
        return x.view(batch, num_masks, -1)

    # ------------------------------------------------------------------ loss
    def losses(self, batch):
        divisibility = getattr(self.backbone, "size_divisibility", 0)
        online_heads = [self.projector] + ([self.predictor] if self.predictor is not None else [])
        queries, keys, ids = [], [], []
        for v in range(2):
            masks = batch["masks"][v]
            self.check_masks(masks, tuple(batch["views"][v].shape[-2:]))
            image = self.view_images(batch, v, divisibility)
            features = self.backbone(image)
            ids.append(masks["ids"])  # sampled once per view in the mapper, shared with the target
            if self.variant == "B":
                queries.append(self._heads(self.pool(features, masks), online_heads))
                with torch.no_grad():
                    keys.append(self._heads(self.pool(self.target.backbone(image), masks), [self.target.projector]))
            else:
                projections = self._heads(self.pool(features, masks), online_heads)
                queries.append(projections)
                keys.append(projections)

        loss_12, loss_21 = contrast_across_processes(
            queries, keys, ids, self.temperature, self.local_negatives, keys_need_grad=self.variant == "S",
            cross_image_negatives=self.cross_image_negatives,
        )
        self.put_metrics(**batch["stats"])  # computed on the CPU by the collate
        return {"loss_detcon_12": loss_12, "loss_detcon_21": loss_21}
