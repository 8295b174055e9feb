"""Linear probe on cached, frozen features: multinomial logistic regression.

Recipe (cheap, deterministic, no learning rate to tune):

* features: L2-normalised (as for the kNN), then standardised per dimension
  with the memory set's mean and variance; a dimension's variance gets 1% of
  the average variance added, so near-constant dimensions (dead ReLUs of a
  random init) are not blown up;
* model: one linear layer (weights and bias) initialised at zero, so no
  random number is drawn;
* loss: mean cross-entropy over the memory set + WEIGHT_DECAY / 2 * ||W||^2
  (bias not penalised); convex, so the solution does not depend on the init;
* optimiser: full-batch L-BFGS (PyTorch's, strong-Wolfe line search, lr 1,
  history 20) for MAX_ITER iterations, each one pass over the memory
  features (computed in chunks so memory use stays bounded).

Full batch and zero init make the result a function of the features only;
the cost is about MAX_ITER passes of a (N x D) @ (D x C) product.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_CHUNK_ROWS = 65536
_VARIANCE_FLOOR = 0.01  # fraction of the mean per-dimension variance added to each variance


@dataclass(frozen=True)
class LinearProbeRecipe:
    max_iter: int = 100
    weight_decay: float = 1e-4
    history_size: int = 20


@dataclass
class LinearProbe:
    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    final_loss: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        x = standardise(features.to(self.weight.device), self.mean, self.scale)
        return x @ self.weight.T + self.bias


def standardise(features: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (F.normalize(features.float(), dim=1) - mean) / scale


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and scale of the L2-normalised memory features."""
    x = F.normalize(features.float(), dim=1)
    mean = x.mean(dim=0)
    variance = x.var(dim=0, unbiased=False)
    return mean, (variance + _VARIANCE_FLOOR * variance.mean() + 1e-12).sqrt()


def train_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, recipe: LinearProbeRecipe = LinearProbeRecipe()
) -> LinearProbe:
    """Fit the probe on (N, D) memory features and their labels (see the module docstring)."""
    if len(features) == 0:
        raise ValueError("the linear probe has no training features")
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} features but {len(labels)} labels")
    if recipe.max_iter < 1 or recipe.weight_decay < 0:
        raise ValueError(f"bad linear probe recipe {recipe}")
    labels = labels.to(features.device, torch.long)
    mean, scale = feature_statistics(features)
    weight = torch.zeros(num_classes, features.shape[1], device=features.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=features.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=recipe.max_iter, history_size=recipe.history_size,
        line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12,
    )
    x = standardise(features, mean, scale)  # one standardised copy of the memory features
    n = len(x)

    def closure():
        optimizer.zero_grad()
        penalty = 0.5 * recipe.weight_decay * weight.pow(2).sum()
        penalty.backward()
        total = penalty.detach()
        for start in range(0, n, _CHUNK_ROWS):  # chunks bound the (rows x classes) logits
            logits = x[start : start + _CHUNK_ROWS] @ weight.T + bias
            loss = F.cross_entropy(logits, labels[start : start + _CHUNK_ROWS], reduction="sum") / n
            loss.backward()
            total = total + loss.detach()
        return total

    with torch.enable_grad():
        optimizer.step(closure)
        final = float(closure())
    return LinearProbe(mean, scale, weight.detach(), bias.detach(), final)
