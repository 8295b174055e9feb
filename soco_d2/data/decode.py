"""Decoding a sample's image once, as small as its views allow, or on the device.

Every pretraining mapper reads images through :class:`soco_d2.imageio.EncodedImage`
(the one image reader: size from the header, pixels on demand), so a view's geometry can be drawn from the size
alone, before anything is decoded.  That allows a reduced-size JPEG decode when
every view is much smaller than the image (``INPUT.SSL.JPEG_DRAFT``, PIL's
``draft``: the DCT is scaled by 1/2, 1/4 or 1/8 during decoding) and handing the
undecoded bytes to the training device (``INPUT.SSL.DECODE_ON "device"``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..imageio import EncodedImage
from .augment import render_views

__all__ = ["EncodedImage", "EncodedViews", "render_encoded", "draft_reduction", "MAX_DRAFT_REDUCTION"]

MAX_DRAFT_REDUCTION = 8  # JPEG's DCT scaling: 1/2, 1/4, 1/8


def draft_reduction(crop_sides, view_sides, max_reduction: int = MAX_DRAFT_REDUCTION) -> int:
    """The largest power of two r <= ``max_reduction`` such that every view still
    downsamples its crop after the image is decoded r times smaller: for each view,
    (shorter side of its crop window, in original pixels) / r >= (view side)."""
    ratio = min(float(c) / float(v) for c, v in zip(crop_sides, view_sides))
    reduction = 1
    while reduction * 2 <= max_reduction and ratio >= reduction * 2:
        reduction *= 2
    return reduction


@dataclass
class EncodedViews:
    """One sample's views for ``INPUT.SSL.DECODE_ON "device"``: the JPEG's bytes (a
    uint8 (L,) tensor; other formats are decoded in the worker: (H, W, 3)) and every
    view's geometry, drawn in the worker like any other sample's."""

    data: torch.Tensor
    is_jpeg: bool
    height: int
    width: int
    rects: list
    flips: list
    sizes: list
    sources: list
    interp: int

    @classmethod
    def of(cls, image: EncodedImage, rects, flips, sizes, sources, interp) -> "EncodedViews":
        is_jpeg = image.format == "JPEG"
        if is_jpeg:
            image.check_complete()  # a truncated file is a bad image here, not a crash in the model's decode
        data = image.tensor() if is_jpeg else torch.from_numpy(np.array(image.decode()))
        return cls(data, is_jpeg, image.height, image.width, [tuple(int(v) for v in r) for r in rects],
                   [bool(f) for f in flips], [int(x) for x in sizes], list(sources), interp)

    def _with(self, data: torch.Tensor) -> "EncodedViews":
        return EncodedViews(data, self.is_jpeg, self.height, self.width, self.rects, self.flips, self.sizes,
                            self.sources, self.interp)

    def to(self, device, non_blocking: bool = False) -> "EncodedViews":
        # decode_jpeg reads the bytes from host memory whatever device decodes them
        return self if self.is_jpeg else self._with(self.data.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "EncodedViews":
        return self._with(self.data.pin_memory())


def render_encoded(samples: list[EncodedViews], device) -> list[torch.Tensor]:
    """Per view, the (N, 3, S, S) uint8 views of a batch: JPEGs decoded together by
    ``torchvision.io.decode_jpeg`` on ``device`` (nvJPEG on CUDA; EXIF orientation
    applied), then cut, resized and flipped by the same code as in the workers."""
    from torchvision.io import ImageReadMode, decode_jpeg

    jpegs = [i for i, s in enumerate(samples) if s.is_jpeg]
    images: list = [None] * len(samples)
    if jpegs:
        decoded = decode_jpeg([samples[i].data for i in jpegs], mode=ImageReadMode.RGB, device=device,
                              apply_exif_orientation=True)
        for i, image in zip(jpegs, decoded):
            images[i] = image
    for i, sample in enumerate(samples):
        if images[i] is None:
            images[i] = sample.data.to(device).permute(2, 0, 1)
    views = [render_views(image, s.rects, s.flips, s.sizes, s.sources, s.interp, s.height, s.width)
             for image, s in zip(images, samples)]
    return [torch.stack([v[index] for v in views]) for index in range(len(samples[0].sizes))]
