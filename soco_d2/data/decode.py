"""Reading an image file once per sample: its size from the header, its pixels on demand.

Every pretraining mapper reads images through :class:`EncodedImage` (the one
place an image is decoded), so a view's geometry can be drawn from the size
alone, before anything is decoded.  That allows a reduced-size JPEG decode when
every view is much smaller than the image (``INPUT.SSL.JPEG_DRAFT``, PIL's
``draft``: the DCT is scaled by 1/2, 1/4 or 1/8 during decoding) and handing the
undecoded bytes to the training device (``INPUT.SSL.DECODE_ON "device"``).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps

from .augment import render_views

__all__ = ["EncodedImage", "EncodedViews", "render_encoded", "draft_reduction", "MAX_DRAFT_REDUCTION"]

EXIF_ORIENTATION = 0x0112
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # rotated by 90 degrees: width and height swap
MAX_DRAFT_REDUCTION = 8  # JPEG's DCT scaling: 1/2, 1/4, 1/8


class EncodedImage:
    """An image file read into memory: ``height`` / ``width`` as displayed (EXIF
    orientation applied) from the header; ``decode()`` gives uint8 (H, W, 3) RGB
    pixels, like detectron2's ``read_image(..., format="RGB")``."""

    def __init__(self, data: bytes, name: str = ""):
        self.data = data
        self.name = name
        self._image = Image.open(io.BytesIO(data))
        self.format = self._image.format
        self.orientation = int(self._image.getexif().get(EXIF_ORIENTATION, 1) or 1)
        width, height = self._image.size
        if self.orientation in TRANSPOSED_ORIENTATIONS:
            width, height = height, width
        self.height, self.width = int(height), int(width)

    @classmethod
    def read(cls, file_name: str) -> "EncodedImage":
        with PathManager.open(file_name, "rb") as f:
            return cls(f.read(), file_name)

    def decode(self, reduction: int = 1) -> np.ndarray:
        """uint8 (H', W', 3) RGB.  ``reduction`` > 1 (a power of two, JPEG only) asks the
        decoder for an image about ``reduction`` times smaller; other formats ignore it.
        The result's size tells what was decoded (``ceil(H / r) x ceil(W / r)`` for JPEG)."""
        image = self._image
        if reduction > 1 and self.format == "JPEG":
            width, height = image.size
            image.draft(image.mode, (-(-width // reduction), -(-height // reduction)))
        image = ImageOps.exif_transpose(image) if self.orientation != 1 else image
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))

    def tensor(self) -> torch.Tensor:
        """The undecoded bytes as a uint8 tensor (what ``torchvision.io.decode_jpeg`` reads)."""
        return torch.frombuffer(bytearray(self.data), dtype=torch.uint8)


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
