"""Frozen features of a detectron2 backbone, per image and per box.

* image level: a feature map (res5 by default) averaged over the image;
* object level: RoIAlign of boxes on one feature map (res4, res5) or on FPN
  levels, each box on the level SoCo's rule (or detectron2's) assigns it, via
  ``soco_d2.modeling.poolers.ScaleAwareROIPooler``; the R x R bins averaged.

Any output of the backbone can be used and, for an FPN, any output of its
bottom-up ResNet too (res5 of a ResNet-FPN), in one forward pass.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, ImageList

from ..modeling.poolers import ScaleAwareROIPooler


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Eval mode (BatchNorm uses its running statistics) and no autograd; the
    module's previous mode is restored on exit (the pretraining hook's case)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


class BackboneWithRes5(nn.Module):
    """A C4 backbone (a ResNet up to res4) followed by the res5 stage its region head
    holds (SoCo_C4's ``box_head.res5``, like detectron2's ``Res5ROIHeads.res5``): there
    the pretrained res5 lives, so that is what a res5 probe of such a model must run.
    Shares the modules (no copy); the stage's first block has stride 2."""

    def __init__(self, backbone: nn.Module, res5: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.res5 = res5
        self.training = backbone.training  # frozen() restores this mode on both
        res4 = backbone.output_shape()["res4"]
        self._res5_shape = ShapeSpec(channels=res5[-1].out_channels, stride=res4.stride * 2)

    @property
    def size_divisibility(self) -> int:
        return getattr(self.backbone, "size_divisibility", 0)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {**self.backbone.output_shape(), "res5": self._res5_shape}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = dict(self.backbone(x))
        features["res5"] = self.res5(features["res4"])
        return features


class FeatureExtractor:
    """Runs a detectron2 backbone on uint8 images and returns the named feature maps."""

    def __init__(self, backbone: nn.Module, pixel_mean, pixel_std):
        self.backbone = backbone
        self.bottom_up = getattr(backbone, "bottom_up", None)
        device = next(backbone.parameters()).device
        self.pixel_mean = torch.as_tensor(pixel_mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        self.pixel_std = torch.as_tensor(pixel_std, dtype=torch.float32, device=device).view(-1, 1, 1)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def output_shapes(self) -> dict[str, ShapeSpec]:
        """Every feature this extractor can return (an FPN's and its bottom-up's)."""
        shapes = dict(self.bottom_up.output_shape()) if self.bottom_up is not None else {}
        shapes.update(self.backbone.output_shape())
        return shapes

    def check(self, names, key: str) -> dict[str, ShapeSpec]:
        shapes = self.output_shapes()
        missing = [n for n in names if n not in shapes]
        if missing:
            raise ValueError(
                f"{key} {missing} are not features of this backbone (it has {sorted(shapes)}); "
                "for res* features of a ResNet, MODEL.RESNETS.OUT_FEATURES must reach them"
            )
        return {n: shapes[n] for n in names}

    def batch(self, images: list[torch.Tensor]) -> ImageList:
        """Normalised images (C, H, W, in cfg.INPUT.FORMAT, 0-255), zero-padded at the
        bottom/right to the backbone's size divisibility (box coordinates unchanged)."""
        normalised = [(im.to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std for im in images]
        return ImageList.from_tensors(normalised, getattr(self.backbone, "size_divisibility", 0))

    def features(self, images: ImageList, names) -> dict[str, torch.Tensor]:
        x = images.tensor
        if all(n in self.backbone.output_shape() for n in names):
            return self.backbone(x)
        if self.bottom_up is not None and all(n in self.bottom_up.output_shape() for n in names):
            return self.bottom_up(x)
        captured = {}
        handle = self.bottom_up.register_forward_hook(lambda _m, _i, out: captured.update(out))
        try:
            top = self.backbone(x)
        finally:
            handle.remove()
        return {**captured, **top}


def global_pool(feature: torch.Tensor, image_sizes, stride: int) -> torch.Tensor:
    """(B, C) mean of each image's feature map over the cells its pixels cover
    (padding added by the batching is left out)."""
    pooled = []
    for i, (h, w) in enumerate(image_sizes):
        pooled.append(feature[i, :, : math.ceil(h / stride), : math.ceil(w / stride)].mean(dim=(1, 2)))
    return torch.stack(pooled)


def same_size_groups(images: list[torch.Tensor]) -> list[list[int]]:
    """Indices of ``images`` grouped by (H, W), in first-seen order.

    Each group runs as its own forward pass: zero padding to a larger image of the
    batch is not the conv's own zero padding (after the first conv + norm it is a
    bias, not zero), so the features near an image's bottom/right border would
    depend on the other images of its batch, and with them on the batch size and
    the number of processes."""
    groups: dict[tuple, list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape[-2:]), []).append(index)
    return list(groups.values())


def image_embeddings(extractor: FeatureExtractor, images: list[torch.Tensor], name: str = "res5") -> torch.Tensor:
    """(B, C) globally pooled feature ``name`` of each image (images of one size per forward pass)."""
    shape = extractor.check([name], "TEST.PROBE.IMAGE_FEATURE")[name]
    pooled: list[torch.Tensor | None] = [None] * len(images)
    for group in same_size_groups(images):
        batch = extractor.batch([images[i] for i in group])
        for i, row in zip(group, global_pool(extractor.features(batch, [name])[name], batch.image_sizes, shape.stride)):
            pooled[i] = row
    return torch.stack(pooled)


def build_region_pooler(
    shapes: dict[str, ShapeSpec],
    resolution: int = 7,
    sampling_ratio: int = 0,
    pooler_type: str = "ROIAlignV2",
    level_assignment: str = "soco",
    thresholds=(48, 96, 192),
) -> ScaleAwareROIPooler:
    """The pooler of ``shapes`` (feature name -> shape, finest first; one channel count)."""
    channels = {s.channels for s in shapes.values()}
    if len(channels) != 1:
        raise ValueError(f"TEST.PROBE.REGION_FEATURES must share one channel count, got {channels}")
    strides = [s.stride for s in shapes.values()]
    if strides != sorted(strides):
        raise ValueError(f"TEST.PROBE.REGION_FEATURES must go from fine to coarse, got strides {strides}")
    return ScaleAwareROIPooler(
        output_size=resolution,
        scales=tuple(1.0 / s for s in strides),
        sampling_ratio=sampling_ratio,
        pooler_type=pooler_type,
        level_assignment=level_assignment,
        thresholds=tuple(thresholds) if len(shapes) > 1 else (),
    )


def region_embeddings(
    extractor: FeatureExtractor,
    images: list[torch.Tensor],
    boxes: list[torch.Tensor],
    names,
    pooler: ScaleAwareROIPooler,
) -> torch.Tensor:
    """(sum of boxes, C) RoIAlign features of each image's XYXY boxes (in the
    image's pixels), averaged over the pooler's R x R bins; boxes in image order
    (images of one size per forward pass, see :func:`same_size_groups`)."""
    per_image: list[torch.Tensor | None] = [None] * len(images)
    for group in same_size_groups(images):
        batch = extractor.batch([images[i] for i in group])
        maps = extractor.features(batch, names)
        box_lists = [Boxes(boxes[i].to(extractor.device, torch.float32)) for i in group]
        pooled = pooler([maps[n] for n in names], box_lists).mean(dim=(2, 3))
        for i, rows in zip(group, pooled.split([len(b) for b in box_lists])):
            per_image[i] = rows
    return torch.cat(per_image)
