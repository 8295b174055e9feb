"""Photometric augmentations: one batched tensor implementation with per-sample parameters.

The mappers draw every random parameter (``ColorPipeline.sample`` in
``soco_d2.data.augment``, cutout squares) so the data stream stays a function
of (seed, sample position); this module only *applies* them, to a batch of
views, wherever ``INPUT.SSL.PHOTOMETRIC_ON`` puts it:

* "model": the views leave the workers as uint8 with their ``ViewPhotometry``;
  the collate turns those into one ``PhotometricBatch`` per view and the
  meta-architecture runs :func:`apply_photometry` on the training device;
* "mapper": the worker runs the same function on its own views (a batch of one).

Order (the official recipes): ColorJitter ops in each sample's own random
order, grayscale, Gaussian blur, solarise, normalisation, cutout (filled with
the pixel mean, i.e. 0 after normalisation).  Values stay float32 in 0..255
between ops, clamped after each op as PIL and torchvision clamp; nothing is
rounded to uint8 in between.

Semantics are torchvision's tensor ones (``torchvision.transforms.v2.functional``):
brightness multiplies, contrast blends with the mean of the grayscale image,
saturation blends with the grayscale image (ITU-R 601-2 luma, torchvision's
weights), hue shifts H in HSV; blur is a true Gaussian of standard deviation
sigma truncated at ``ceil(3 * max sigma)`` pixels with replicated edges (PIL's
``GaussianBlur(radius=sigma)`` approximates the same Gaussian with three box
blurs); solarise inverts values >= 128.  How far each op is from today's PIL
path is measured in ``tests/test_photometric.py`` and stated in the README.

Per-sample parameters need a few lines of vectorisation (torchvision's ops
take one factor per call): the collate precomputes, on the CPU, which samples
each op touches, so applying a batch never reads a value back from the device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "JITTER_OPS",
    "NEUTRAL_FACTORS",
    "SOLARIZE_THRESHOLD",
    "ViewPhotometry",
    "PhotometricBatch",
    "apply_photometry",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "grayscale",
    "gaussian_blur",
    "solarize",
    "cutout_mask",
    "blur_radius",
]

JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
NEUTRAL_FACTORS = (1.0, 1.0, 1.0, 0.0)  # the factor of each jitter op that changes nothing
SOLARIZE_THRESHOLD = 128.0  # PIL's default; the official recipes' 0.5 of the [0, 1] range
MAX_VALUE = 255.0


@dataclass
class ViewPhotometry:
    """The photometric parameters drawn for one view of one sample.

    ``jitter_order``: indices into ``JITTER_OPS`` in application order, only the
    ops that run (empty: no colour jitter); ``jitter_factors``: the factor of each
    op (``NEUTRAL_FACTORS`` where it does not run); ``blur_sigma`` 0 = no blur;
    ``blur_radius``: kernel half-width shared by every sample of the view
    (``ceil(3 * max sigma)`` of the recipe, so a sample blurs the same in any
    batch); ``cutout``: (n, 4) int32 squares x0, y0, x1, y1 (x1/y1 exclusive)
    in view pixels, one row per cutout box, empty rows (x1 <= x0) where none fired.
    """

    jitter_order: tuple[int, ...] = ()
    jitter_factors: tuple[float, float, float, float] = NEUTRAL_FACTORS
    grayscale: bool = False
    blur_sigma: float = 0.0
    blur_radius: int = 0
    solarize: bool = False
    cutout: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int32))


@dataclass
class PhotometricBatch:
    """The ``ViewPhotometry`` of every sample of one view, ready to apply to a batch.

    Tensors (moved with ``to``): ``factors`` (N, 4) float32, ``blur_sigma`` (N,)
    float32, ``cutout`` (N, n, 4) int32 or None, ``index`` int64 (every index
    list below, concatenated).  Plain Python (known without touching a device):
    ``groups``: name -> (start, stop) in ``index`` of the samples an op applies to
    ("jitter{step}_{op}", "grayscale", "blur", "solarize"), only non-empty groups;
    ``blur_radius``; ``size`` N.
    """

    factors: torch.Tensor
    blur_sigma: torch.Tensor
    cutout: torch.Tensor | None
    index: torch.Tensor
    groups: dict[str, tuple[int, int]]
    blur_radius: int
    size: int

    @classmethod
    def from_views(cls, params: list[ViewPhotometry]) -> "PhotometricBatch":
        lists: dict[str, list[int]] = {}

        def add(name: str, i: int) -> None:
            lists.setdefault(name, []).append(i)

        for i, p in enumerate(params):
            for step, op in enumerate(p.jitter_order):
                add(f"jitter{step}_{op}", i)
            if p.grayscale:
                add("grayscale", i)
            if p.blur_sigma > 0:
                add("blur", i)
            if p.solarize:
                add("solarize", i)
        groups, flat = {}, []
        for name, members in lists.items():
            groups[name] = (len(flat), len(flat) + len(members))
            flat.extend(members)
        cutout = np.stack([np.asarray(p.cutout, dtype=np.int32).reshape(-1, 4) for p in params])
        fired = (cutout[..., 2] > cutout[..., 0]) & (cutout[..., 3] > cutout[..., 1])
        return cls(
            factors=torch.tensor([p.jitter_factors for p in params], dtype=torch.float32).reshape(-1, 4),
            blur_sigma=torch.tensor([p.blur_sigma for p in params], dtype=torch.float32),
            cutout=torch.from_numpy(cutout) if fired.any() else None,
            index=torch.tensor(flat, dtype=torch.int64),
            groups=groups,
            blur_radius=max((p.blur_radius for p in params), default=0),
            size=len(params),
        )

    def _map(self, fn) -> "PhotometricBatch":
        return PhotometricBatch(
            fn(self.factors), fn(self.blur_sigma), None if self.cutout is None else fn(self.cutout),
            fn(self.index), self.groups, self.blur_radius, self.size,
        )

    def to(self, device, non_blocking: bool = False) -> "PhotometricBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "PhotometricBatch":  # called by the DataLoader's pin_memory thread
        return self._map(lambda t: t.pin_memory())

    def members(self, name: str) -> tuple[torch.Tensor, int] | None:
        """(indices, count) of the samples group ``name`` applies to, or None if none."""
        if name not in self.groups:
            return None
        start, stop = self.groups[name]
        return self.index[start:stop], stop - start


# ------------------------------------------------------------------ ops on (n, 3, H, W) float in 0..255
def _per_sample(factor: torch.Tensor) -> torch.Tensor:
    return factor.reshape(-1, 1, 1, 1)


def _luma(x: torch.Tensor) -> torch.Tensor:
    return TF.rgb_to_grayscale(x, num_output_channels=1)


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    ratio = _per_sample(ratio)
    return (x * ratio + other * (1.0 - ratio)).clamp_(0.0, MAX_VALUE)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * _per_sample(factor)).clamp_(0.0, MAX_VALUE)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _luma(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _luma(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue (H of HSV, in turns) of each sample by its ``shift``."""
    rgb = x / MAX_VALUE
    r, g, b = rgb.unbind(dim=-3)
    value, _ = rgb.max(dim=-3)
    chroma = value - rgb.min(dim=-3).values
    saturation = chroma / torch.where(value > 0, value, torch.ones_like(value))
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(value == r, (g - b) / safe, torch.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = torch.remainder(hue / 6.0 + shift.reshape(-1, 1, 1), 1.0)
    # HSV -> RGB: channel c is v - v * s * clamp(min(k, 4 - k), 0, 1), k = (n_c + 6 h) mod 6
    n = torch.arange(5.0, 0.0, -2.0, device=x.device).view(1, 3, 1, 1)  # R, G, B: 5, 3, 1 (made on the device: no copy)
    k = torch.remainder(n + 6.0 * hue[:, None], 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    out = value[:, None] * (1.0 - saturation[:, None] * ramp)
    return (out * MAX_VALUE).clamp_(0.0, MAX_VALUE)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    return TF.rgb_to_grayscale(x, num_output_channels=3).contiguous()


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur, each sample with its own sigma, kernels of 2 * radius + 1
    taps, replicated edges."""
    n, c, h, w = x.shape
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets[None, :] / sigma.to(x.dtype)[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0, output_size=n * c)
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w).clamp_(0.0, MAX_VALUE)  # the kernel sums to 1 up to rounding


def solarize(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= SOLARIZE_THRESHOLD, MAX_VALUE - x, x)


def cutout_mask(squares: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, n, 4) squares x0, y0, x1, y1 (exclusive) -> (N, 1, H, W) bool, True inside any square."""
    xs = torch.arange(width, device=squares.device)
    ys = torch.arange(height, device=squares.device)
    inside_x = (xs >= squares[..., 0:1]) & (xs < squares[..., 2:3])  # (N, n, W)
    inside_y = (ys >= squares[..., 1:2]) & (ys < squares[..., 3:4])  # (N, n, H)
    return (inside_y[..., :, None] & inside_x[..., None, :]).any(dim=1, keepdim=True)


_JITTER_FNS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def _apply_group(x: torch.Tensor, batch: PhotometricBatch, name: str, fn) -> torch.Tensor:
    found = batch.members(name)
    if found is None:
        return x
    index, count = found
    if count == x.shape[0]:  # the whole batch, in order (from_views lists samples in order)
        return fn(x, index)
    x[index] = fn(x[index], index)
    return x


def apply_photometry(
    views: torch.Tensor,
    batch: PhotometricBatch | None,
    pixel_mean,
    pixel_std,
    normalize: bool = True,
) -> torch.Tensor:
    """(N, 3, H, W) uint8 (or float 0..255) RGB views -> float32 after the colour ops,
    normalised ``(x - mean) / std`` (``normalize``) or left in 0..255, then cutout
    (0, or the mean when not normalised).  ``batch`` None: normalisation only.

    Runs on whatever device the inputs are on and never reads a value back from it."""
    if views.dim() != 4 or views.shape[1] != 3:
        raise ValueError(f"views must be (N, 3, H, W), got {tuple(views.shape)}")
    x = views.to(torch.float32)
    if x.data_ptr() == views.data_ptr():
        x = x.clone()  # float views: never change the caller's tensor
    mean = torch.as_tensor(pixel_mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(pixel_std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    if batch is not None:
        if batch.size != x.shape[0]:
            raise ValueError(f"{x.shape[0]} views but photometric parameters of {batch.size}")
        for step in range(len(JITTER_OPS)):
            for op, fn in enumerate(_JITTER_FNS):
                x = _apply_group(x, batch, f"jitter{step}_{op}",
                                 lambda y, i, fn=fn, op=op: fn(y, batch.factors[i, op]))
        x = _apply_group(x, batch, "grayscale", lambda y, i: grayscale(y))
        x = _apply_group(x, batch, "blur", lambda y, i: gaussian_blur(y, batch.blur_sigma[i], batch.blur_radius))
        x = _apply_group(x, batch, "solarize", lambda y, i: solarize(y))
    fill = torch.zeros_like(mean) if normalize else mean
    if normalize:
        x = (x - mean) / std
    if batch is not None and batch.cutout is not None:
        x = torch.where(cutout_mask(batch.cutout, x.shape[2], x.shape[3]), fill, x)
    return x


def blur_radius(sigma_range) -> int:
    """Kernel half-width covering 3 standard deviations of the largest sigma."""
    return int(math.ceil(3.0 * float(max(sigma_range))))
