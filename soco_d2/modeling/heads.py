"""MLP heads shared by every method (projector, predictor)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.layers import get_norm


class MLPHead(nn.Module):
    """Linear -> norm -> ReLU -> Linear.

    BYOL/SoCo/DetCon projectors and predictors (with BN, whose statistics run
    over every vector of the batch: images, or RoIs, or masks) and the MoCo-v2
    head (``norm=""``).  The norm is any detectron2 ``get_norm`` name, so
    ``SyncBN`` / ``naiveSyncBN`` sync statistics across processes exactly as
    the backbone's do; it is applied on an (N, C, 1, 1) view because
    detectron2's norms are image norms.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, norm: str = "BN", last_bias: bool = True):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.norm = get_norm(norm, hidden_dim) if norm else None
        self.fc2 = nn.Linear(hidden_dim, out_dim, bias=last_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        if self.norm is not None:
            x = self.norm(x[:, :, None, None]).flatten(1)
        return self.fc2(F.relu(x))


def build_projector(cfg, in_dim: int) -> MLPHead:
    ssl = cfg.MODEL.SSL
    return MLPHead(in_dim, ssl.PROJ_HIDDEN_DIM, ssl.PROJ_DIM, ssl.HEAD_NORM, ssl.HEAD_LAST_BIAS)


def build_predictor(cfg) -> MLPHead | None:
    """The online-only predictor, or None when ``MODEL.SSL.PRED_HIDDEN_DIM`` is 0."""
    ssl = cfg.MODEL.SSL
    if ssl.PRED_HIDDEN_DIM <= 0:
        return None
    return MLPHead(ssl.PROJ_DIM, ssl.PRED_HIDDEN_DIM, ssl.PROJ_DIM, ssl.HEAD_NORM, ssl.HEAD_LAST_BIAS)
