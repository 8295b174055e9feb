"""DenseCL (Wang et al., CVPR 2021): MoCo-v2 plus a dense contrastive head.

Besides MoCo-v2's global InfoNCE, every position of the query view's dense
head (1x1 conv 2048-2048, ReLU, 1x1 conv 2048-128 on C5; ``dense_projector``)
is contrasted with the key view's dense vector at the position whose
*backbone* feature is most similar (argmax cosine), against a second queue of
pooled key dense vectors (pooled before normalisation).  Loss =
(1 - lambda) global + lambda dense, lambda = ``MODEL.DENSECL.LOSS_WEIGHT``
(0 before ``MODEL.DENSECL.WARMUP_ITERS``, the official warm-up hook's hard switch).

Deviation: with ``MODEL.DENSECL.GRID_SIZE`` > 0 the backbone maps used for the
correspondence are average-pooled to the same grid as the dense head (the
official code leaves them at 7x7, which breaks on any other grid).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import get_event_storage

from ..gather import all_gather_no_grad
from ..losses import densecl_dense_loss
from ..queue import FeatureQueue
from .moco import MoCoV2


class DenseHead(nn.Module):
    """DenseCL's dense projection: (optional adaptive pool) -> conv1x1 -> ReLU -> conv1x1.

    Returns the (N, D, S*S) dense map and its (N, D) global average pool (the key
    side's pooled vector feeds the dense queue).  PyTorch's default conv init, as
    the official neck."""

    def __init__(self, in_channels: int, hidden_dim: int, out_dim: int, grid_size: int = 0):
        super().__init__()
        self.out_dim = out_dim
        self.grid_size = int(grid_size)
        self.conv1 = nn.Conv2d(in_channels, hidden_dim, 1)
        self.conv2 = nn.Conv2d(hidden_dim, out_dim, 1)

    def pool_grid(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, self.grid_size) if self.grid_size > 0 else x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv2(F.relu(self.conv1(self.pool_grid(x))))
        return x.flatten(2), x.mean(dim=(2, 3))


@META_ARCH_REGISTRY.register()
class DenseCL(MoCoV2):
    """MoCo-v2's global branch + the dense branch (see the module docstring).

    Logged losses are already weighted: ``loss_contra_single`` = (1 - lambda) x
    global, ``loss_contra_dense`` = lambda x dense (the official names)."""

    target_modules = ("backbone", "projector", "dense_projector")

    @configurable
    def __init__(self, *, dense_projector: DenseHead, loss_weight: float = 0.5, warmup_iters: int = 0, **kwargs):
        super().__init__(dense_projector=dense_projector, **kwargs)
        self.loss_weight = float(loss_weight)
        self.warmup_iters = int(warmup_iters)
        self.dense_queue = FeatureQueue(dense_projector.out_dim, self.queue.size)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ssl = cfg.MODEL.SSL
        in_channels = ret["backbone"].output_shape()[ret["feature"]].channels
        ret.update(
            dense_projector=DenseHead(in_channels, ssl.PROJ_HIDDEN_DIM, ssl.PROJ_DIM, cfg.MODEL.DENSECL.GRID_SIZE),
            loss_weight=cfg.MODEL.DENSECL.LOSS_WEIGHT,
            warmup_iters=cfg.MODEL.DENSECL.WARMUP_ITERS,
        )
        return ret

    def encode(self, backbone, projector, images, dense_projector=None):
        out = super().encode(backbone, projector, images)
        out["dense"], out["dense_pooled"] = dense_projector(out["feat"])
        out["feat"] = dense_projector.pool_grid(out["feat"])  # the correspondence's grid
        return out

    def encode_query(self, images):
        return self.encode(self.backbone, self.projector, images, self.dense_projector)

    def encode_key_batch(self, images):
        return self.encode(self.target.backbone, self.target.projector, images, self.target.dense_projector)

    def dense_weight(self, iteration: int) -> float:
        """lambda at an iteration: 0 during the warm-up, then ``loss_weight``."""
        return 0.0 if iteration < self.warmup_iters else self.loss_weight

    @torch.no_grad()
    def enqueue(self, key) -> None:
        super().enqueue(key)
        self.dense_queue.enqueue(all_gather_no_grad(F.normalize(key["dense_pooled"], dim=1)))

    def losses(self, batch):
        storage = get_event_storage()
        query = self.encode_query(self.view_images(batch, 0))
        key = self.encode_key(self.view_images(batch, 1))
        loss_global = self.global_loss(query, key)
        loss_dense = densecl_dense_loss(
            query["dense"], key["dense"], query["feat"], key["feat"], self.dense_queue.queue.clone(), self.temperature
        )
        self.log_queue_state()
        self.enqueue(key)
        weight = self.dense_weight(storage.iter)
        self.put_metrics(**{"densecl/lambda": weight})
        return {"loss_contra_single": (1.0 - weight) * loss_global, "loss_contra_dense": weight * loss_dense}
