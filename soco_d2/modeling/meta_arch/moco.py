"""MoCo-v2 (Chen et al. 2020): the image-level baseline of DenseCL.

Query encoder = backbone + global average pool + MLP head (2048-2048-128, no
norm); key encoder = its momentum copy (``target.*``, constant momentum 0.999
through the engine's momentum hook); negatives = a queue of 65,536 earlier keys.
One direction only (view 1 queries, view 2 keys), as the official code.

Shuffle-BN (``MODEL.SSL.SHUFFLE_BN``, on by default): with several processes the
key encoder forwards a random slice of the all-gathered key images (permutation
broadcast from rank 0) and the outputs are gathered back and un-shuffled, as the
official code does for its plain per-GPU BN; with one process it does nothing.
Keys enqueued are the all-gathered batch, so every rank holds the same queue.

The momentum update runs after each optimizer step (engine hook) instead of at
the start of the next forward (official code): the key encoder of every
forward is the same.  The head uses OpenSelfSup's Kaiming init (its MoCo-v2 and
DenseCL); the backbone keeps detectron2's init.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..encoder import build_encoder
from ..gather import all_gather_no_grad, batch_shuffle, batch_unshuffle
from ..heads import build_projector
from ..losses import infonce_loss
from ..queue import FeatureQueue
from .base import SSLMetaArch


def kaiming_init_linear_(module: nn.Module) -> nn.Module:
    """OpenSelfSup's neck init (``init_linear='kaiming'``) used by its MoCo-v2 and DenseCL:
    every Linear Kaiming-normal (fan_in, ReLU gain), bias 0; convolutions untouched."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


@META_ARCH_REGISTRY.register()
class MoCoV2(SSLMetaArch):
    """Global InfoNCE of view-1 queries against view-2 keys and the queue."""

    target_modules = ("backbone", "projector")

    @configurable
    def __init__(
        self,
        *,
        backbone,
        feature: str,
        projector,
        queue_size: int,
        temperature: float = 0.2,
        shuffle_bn: bool = True,
        pixel_mean,
        pixel_std,
        metrics_period: int = 1,
        max_iter: int = 0,
        **modules,
    ):
        super().__init__(pixel_mean=pixel_mean, pixel_std=pixel_std, metrics_period=metrics_period, max_iter=max_iter)
        self.backbone = backbone
        self.feature = feature
        self.projector = projector
        for name, module in modules.items():  # subclasses' extra heads (DenseCL: dense_projector)
            setattr(self, name, module)
        self.temperature = float(temperature)
        self.shuffle_bn = bool(shuffle_bn)
        self.queue = FeatureQueue(projector.out_dim, queue_size)
        self.make_target(list(self.target_modules))

    @classmethod
    def from_config(cls, cfg):
        backbone = build_encoder(cfg)
        feature = cfg.MODEL.SSL.FEATURE
        return {
            "backbone": backbone,
            "feature": feature,
            "projector": kaiming_init_linear_(build_projector(cfg, backbone.output_shape()[feature].channels)),
            "queue_size": cfg.MODEL.SSL.QUEUE_SIZE,
            "temperature": cfg.MODEL.SSL.TEMPERATURE,
            "shuffle_bn": cfg.MODEL.SSL.SHUFFLE_BN,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            **cls.metrics_kwargs(cfg),
        }

    @classmethod
    def accumulation_refusal(cls, cfg) -> str | None:
        return (f"{cls.__name__} updates its negatives queue in every forward: the keys of one slice "
                "would be negatives of the next slices of the same step, and the queue would advance "
                "ACCUMULATE_STEPS times per optimizer step")

    # ------------------------------------------------------------------ encoders
    def encode(self, backbone, projector, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone map ``feat`` (N, C, S, S) and global embedding ``global`` (N, D)."""
        feat = backbone(images)[self.feature]
        return {"feat": feat, "global": projector(feat.mean(dim=(2, 3)))}

    def encode_query(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.encode(self.backbone, self.projector, images)

    def encode_key_batch(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.encode(self.target.backbone, self.target.projector, images)

    @torch.no_grad()
    def encode_key(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The key encoder's outputs, with shuffle-BN across processes when enabled."""
        if self.shuffle_bn:
            images, unshuffle = batch_shuffle(images)
        outputs = self.encode_key_batch(images)
        if self.shuffle_bn:
            outputs = {name: batch_unshuffle(value, unshuffle) for name, value in outputs.items()}
        return outputs

    # ------------------------------------------------------------------ loss
    def global_loss(self, query, key) -> torch.Tensor:
        # clone: the queue is updated in place before backward (the official .clone().detach())
        return infonce_loss(query["global"], key["global"], self.queue.queue.clone(), self.temperature)

    @torch.no_grad()
    def enqueue(self, key) -> None:
        """Every rank writes the same all-gathered keys, so the queues stay identical."""
        self.queue.enqueue(all_gather_no_grad(F.normalize(key["global"], dim=1)))

    def losses(self, batch):
        query = self.encode_query(self.view_images(batch, 0))
        key = self.encode_key(self.view_images(batch, 1))
        loss = self.global_loss(query, key)
        self.log_queue_state()
        self.enqueue(key)
        return {"loss_contra": loss}

    def log_queue_state(self) -> None:
        """How much of the queue this step's loss saw filled with real keys
        (``queue_filled`` < 1: partly the random initial keys, so the loss is
        lower than it will be once the queue holds real negatives)."""
        self.put_metrics(**{"moco/queue_filled": self.queue.filled_tensor()})
