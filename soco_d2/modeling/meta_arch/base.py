"""What every pretraining meta-architecture shares: pixel normalisation of the
mapper's views, the momentum target, and the training/eval contract."""
from __future__ import annotations

import torch
import torch.nn as nn
from detectron2.structures import ImageList

from ..momentum import build_target, ema_update_


class SSLMetaArch(nn.Module):
    """Base of the soco_d2 meta-architectures.

    Subclasses build their online modules, call ``self.make_target(names)`` to
    create the momentum copies (``self.target.<name>``), and implement
    ``losses(batched_inputs)``.  ``forward`` in training mode returns the loss
    dict detectron2's trainers expect; in eval mode it returns the online
    backbone's features of ``views[0]`` (e.g. for feature inspection).
    """

    def __init__(self, *, pixel_mean, pixel_std):
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.target: nn.ModuleDict | None = None

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def make_target(self, names: list[str]) -> None:
        """Momentum copies of the online modules ``names`` (``target.<name>.*`` in checkpoints)."""
        self.target = build_target({name: getattr(self, name) for name in names})

    @torch.no_grad()
    def momentum_update(self, tau: float) -> None:
        """EMA of every target module toward its online module (no-op without a target)."""
        if self.target is None:
            return
        for name, target in self.target.items():
            ema_update_(target, getattr(self, name), tau)

    def view_images(self, batched_inputs: list[dict], index: int, size_divisibility: int = 0) -> torch.Tensor:
        """View ``index`` of every image, normalised and padded into one (N, 3, H, W) tensor.

        Padding (zeros after normalisation, at the bottom/right, so box
        coordinates are unchanged) is only added when the backbone needs a size
        divisible by ``size_divisibility`` (FPN: 32).
        """
        views = [(x["views"][index].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(views, size_divisibility).tensor

    def losses(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batched_inputs: list[dict]):
        if self.training:
            return self.losses(batched_inputs)
        backbone = getattr(self, "backbone")
        return backbone(self.view_images(batched_inputs, 0, getattr(backbone, "size_divisibility", 0)))
