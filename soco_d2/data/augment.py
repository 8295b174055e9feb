"""Per-view augmentation pieces shared by every pretraining mapper.

Geometry is expressed with detectron2 transforms (``CropTransform``,
``ResizeTransform``, ``HFlipTransform`` in a ``TransformList``), so the image,
its boxes (``apply_box``) and its label maps (``apply_segmentation``) always
move together: a view's boxes and masks are in that view's final pixel frame
by construction.  Boxes use continuous coordinates (x2 exclusive), which is
the convention under which crop (shift), resize (scale) and flip
(``x' = W - x``) are exact.

Images are resized as uint8 tensors by torchvision (bilinear / bicubic with
antialiasing: within 1-2 levels of PIL's resize on under 1 % of the pixels,
3-4x faster); "nearest" and label maps sample the source pixel whose centre is
nearest (PIL's NEAREST rule), so masks stay aligned with the pixels they label.

Randomness: geometry and cutout draw from ``np.random``, colour from the torch
RNG (torchvision's ``ColorJitter.get_params``); the loader seeds both per
sample.  The colour ops themselves run in :mod:`soco_d2.data.photometric`.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from detectron2.data import transforms as T
from PIL import Image
from torchvision.transforms import ColorJitter, InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .photometric import NEUTRAL_FACTORS, ViewPhotometry, blur_radius

__all__ = [
    "INTERPOLATIONS",
    "ViewResize",
    "resize_image",
    "resize_label_map",
    "nearest_index",
    "render_views",
    "hwc_to_chw",
    "RandomResizedCrop",
    "sample_crop_rect",
    "crop_resize_transform",
    "ColorPipeline",
    "sample_cutout_squares",
]

INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
_TORCHVISION_MODES = {Image.BILINEAR: InterpolationMode.BILINEAR, Image.BICUBIC: InterpolationMode.BICUBIC}


def interpolation(name: str) -> int:
    try:
        return INTERPOLATIONS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}; use one of {sorted(INTERPOLATIONS)}") from None


def hwc_to_chw(image: np.ndarray) -> torch.Tensor:
    """A (3, H, W) uint8 tensor *view* of an (H, W, 3) array (no copy; decoded images
    are read-only arrays, which are never written through the view)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
        return torch.from_numpy(image).permute(2, 0, 1)


def nearest_index(old: int, new: int) -> np.ndarray:
    """PIL's NEAREST resampling of a side of ``old`` pixels to ``new``: for each output
    pixel, the source pixel holding its centre."""
    return np.minimum(((np.arange(new, dtype=np.float64) + 0.5) * (old / new)).astype(np.int64), old - 1)


def resize_image(image: torch.Tensor, height: int, width: int, interp: int = Image.BILINEAR) -> torch.Tensor:
    """(C, h, w) uint8 (any strides) -> (C, height, width) uint8."""
    if interp == Image.NEAREST:
        rows = torch.from_numpy(nearest_index(image.shape[-2], height)).to(image.device)
        cols = torch.from_numpy(nearest_index(image.shape[-1], width)).to(image.device)
        return image.index_select(-2, rows).index_select(-1, cols)
    if interp not in _TORCHVISION_MODES:
        raise ValueError(f"unsupported interpolation {interp!r}")
    return TF.resize(image, [height, width], interpolation=_TORCHVISION_MODES[interp], antialias=True)


def render_views(image: torch.Tensor, rects, flips, sizes, sources, interp: int = Image.BILINEAR,
                 height: int | None = None, width: int | None = None) -> list[torch.Tensor]:
    """uint8 (3, S, S) views of a (3, H', W') uint8 image: crop ``rects[v]`` (x0, y0, w, h),
    resize to ``sizes[v]``, flip when ``flips[v]``; a view with ``sources[v] = j`` is view
    j's image before its flip, resized (SoCo*'s V4).

    The windows are in the pixels of a ``height x width`` image; ``image`` may be a
    reduced decode of it (JPEG draft): windows are then scaled and rounded to its
    pixels (under one view pixel off the carried boxes)."""
    scale_y = image.shape[-2] / float(height or image.shape[-2])
    scale_x = image.shape[-1] / float(width or image.shape[-1])
    unflipped = []
    for rect, size, source in zip(rects, sizes, sources):
        if source is not None:
            unflipped.append(resize_image(unflipped[source], size, size, interp))
            continue
        x0, y0, w, h = (int(v) for v in rect)
        if scale_x != 1.0 or scale_y != 1.0:
            x1, y1 = round((x0 + w) * scale_x), round((y0 + h) * scale_y)
            x0, y0 = min(round(x0 * scale_x), x1 - 1), min(round(y0 * scale_y), y1 - 1)
            w, h = x1 - x0, y1 - y0
        unflipped.append(resize_image(image[:, y0 : y0 + h, x0 : x0 + w], size, size, interp))
    return [view.flip(-1) if flip else view for view, flip in zip(unflipped, flips)]


def resize_label_map(label: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest resize of a 2-D integer map (any dtype), PIL's pixel-centre rule."""
    return label[nearest_index(label.shape[0], height)[:, None], nearest_index(label.shape[1], width)[None, :]]


class ViewResize(T.ResizeTransform):
    """detectron2's ``ResizeTransform`` with this module's resampling: images through
    :func:`resize_image` (torchvision, antialiased), label maps of any integer dtype
    through :func:`resize_label_map` (detectron2's own nearest resize of non-uint8
    maps samples ``floor(i * scale)``, up to half a source pixel off PIL's
    centre-aligned resampling of the image)."""

    def apply_image(self, img: np.ndarray, interp=None) -> np.ndarray:
        assert img.shape[:2] == (self.h, self.w), (img.shape, self.h, self.w)
        squeeze = img.ndim == 2
        chw = hwc_to_chw(np.ascontiguousarray(img[:, :, None] if squeeze else img))
        out = resize_image(chw, self.new_h, self.new_w, interp if interp is not None else self.interp)
        out = out.permute(1, 2, 0).numpy()
        return out[:, :, 0] if squeeze else out

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        assert segmentation.shape[:2] == (self.h, self.w), (segmentation.shape, self.h, self.w)
        return resize_label_map(segmentation, self.new_h, self.new_w)


# ----------------------------------------------------------------- geometry
def sample_crop_rect(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    attempts: int = 10,
    fallback: str = "center",
) -> tuple[int, int, int, int]:
    """A random-resized-crop window ``(x0, y0, w, h)`` in integer pixels.

    Each attempt draws an area fraction ~ U(scale) and a log-uniform aspect
    ratio, ``w = round(sqrt(area * ratio))``, ``h = round(sqrt(area / ratio))``,
    and accepts the window if it fits; the offset is then uniform.  When no
    attempt fits:

    * ``fallback="center"`` (torchvision's ``RandomResizedCrop``, SoCo / BYOL /
      MoCo / DenseCL): the largest centred crop whose aspect ratio is within
      ``ratio``;
    * ``fallback="clip"`` (DetCon's single-attempt crop): the last attempt's
      width and height clipped to the image, with a uniform offset.
    """
    if fallback not in ("center", "clip"):
        raise ValueError(f"crop fallback must be 'center' or 'clip', got {fallback!r}")
    area = float(height * width)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    w = h = 0
    for _ in range(max(int(attempts), 1)):
        target_area = area * np.random.uniform(scale[0], scale[1])
        aspect = math.exp(np.random.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(np.random.randint(0, width - w + 1))
            y0 = int(np.random.randint(0, height - h + 1))
            return x0, y0, w, h
    if fallback == "clip":
        w, h = min(max(w, 1), width), min(max(h, 1), height)
        return int(np.random.randint(0, width - w + 1)), int(np.random.randint(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def crop_resize_transform(
    rect: tuple[int, int, int, int], height: int, width: int, size: int, interp: int = Image.BILINEAR
) -> T.TransformList:
    """Crop ``rect`` (x0, y0, w, h) out of a ``height x width`` image and resize it to ``size x size``."""
    x0, y0, w, h = (int(v) for v in rect)
    tfms = []
    if (x0, y0, w, h) != (0, 0, width, height):
        tfms.append(T.CropTransform(x0, y0, w, h, width, height))
    tfms.append(ViewResize(h, w, size, size, interp))
    return T.TransformList(tfms)


class RandomResizedCrop(T.Augmentation):
    """torchvision-style random resized crop as a detectron2 ``Augmentation``
    (``CropTransform`` + ``ResizeTransform`` to ``size x size``); see
    :func:`sample_crop_rect` for the sampling and the fallback."""

    def __init__(
        self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), attempts=10, fallback="center", interp=Image.BILINEAR
    ):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        rect = sample_crop_rect(h, w, self.scale, self.ratio, self.attempts, self.fallback)
        return crop_resize_transform(rect, h, w, self.size, self.interp)


# ------------------------------------------------------------------- colour
class ColorPipeline:
    """BYOL-style colour recipe of one view, in the official order: ColorJitter
    (with probability ``jitter_prob``, ops in random order, as torchvision),
    grayscale, Gaussian blur with sigma ~ U(blur_sigma), solarise.

    ``sample()`` draws one view's parameters (torch RNG, the same draws as
    torchvision's ``ColorJitter``); :func:`soco_d2.data.photometric.apply_photometry`
    applies them.
    """

    def __init__(
        self,
        jitter=(0.4, 0.4, 0.2, 0.1),
        jitter_prob=0.8,
        grayscale_prob=0.2,
        blur_prob=0.0,
        blur_sigma=(0.1, 2.0),
        solarize_prob=0.0,
    ):
        self._jitter = ColorJitter(*jitter)
        self.jitter_prob = float(jitter_prob)
        self.grayscale_prob = float(grayscale_prob)
        self.blur_prob = float(blur_prob)
        self.blur_sigma = tuple(float(s) for s in blur_sigma)
        self.solarize_prob = float(solarize_prob)
        self.blur_radius = blur_radius(self.blur_sigma) if self.blur_prob > 0 else 0

    def __repr__(self):
        return (
            f"ColorPipeline(jitter_prob={self.jitter_prob}, grayscale_prob={self.grayscale_prob}, "
            f"blur_prob={self.blur_prob}, blur_sigma={self.blur_sigma}, solarize_prob={self.solarize_prob})"
        )

    @staticmethod
    def _happens(p: float) -> bool:
        # p == 0 / p == 1 draw nothing, so a view with an op always on or off
        # does not shift the random stream of the others.
        if p <= 0.0:
            return False
        if p >= 1.0:
            return True
        return bool(torch.rand(1).item() < p)

    def sample(self) -> ViewPhotometry:
        ops = ViewPhotometry(blur_radius=self.blur_radius)
        if self._happens(self.jitter_prob):
            j = self._jitter
            order, *factors = ColorJitter.get_params(j.brightness, j.contrast, j.saturation, j.hue)
            ops.jitter_order = tuple(int(op) for op in order.tolist() if factors[int(op)] is not None)
            ops.jitter_factors = tuple(
                float(f) if f is not None else neutral for f, neutral in zip(factors, NEUTRAL_FACTORS)
            )
        ops.grayscale = self._happens(self.grayscale_prob)
        if self._happens(self.blur_prob):
            ops.blur_sigma = float(torch.empty(1).uniform_(*self.blur_sigma).item())
        ops.solarize = self._happens(self.solarize_prob)
        return ops


# ------------------------------------------------------------------- cutout
def sample_cutout_squares(
    boxes: np.ndarray,
    height: int,
    width: int,
    prob: float = 0.5,
    ratio: tuple[float, float] = (0.1, 0.3),
) -> np.ndarray:
    """SoCo's ``RandomCutoutInBbox``, the squares only (``apply_photometry`` fills them).

    For each box (duplicates included), with probability ``prob``: a square of
    area U(ratio) x box area, side ``round(sqrt(area))``, centred at a uniform
    random integer pixel inside the box, clipped to the ``height x width`` view;
    it is filled with the pixel mean (0 after normalisation).

    ``boxes`` are the view's final boxes (after flip), continuous XYXY; the box's
    pixels are columns ``floor(x1) .. ceil(x2) - 1`` (and rows alike), and its
    area is counted in those pixels.  Deviation from the official code, on
    purpose: the official cutout used the un-flipped boxes (issue #3) and after
    its fix drew ``random.randint`` on non-integer corners, which raises; here
    integer pixels of the flipped boxes are used.  Returns (n, 4) int32 squares
    (x0, y0, x1, y1), x1/y1 exclusive, one row per box, zeros where none fired.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    squares = np.zeros((len(boxes), 4), dtype=np.int32)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if np.random.uniform() >= prob:
            continue
        ix1 = min(max(int(math.floor(x1)), 0), width - 1)
        iy1 = min(max(int(math.floor(y1)), 0), height - 1)
        ix2 = min(max(int(math.ceil(x2)) - 1, ix1), width - 1)
        iy2 = min(max(int(math.ceil(y2)) - 1, iy1), height - 1)
        area = (ix2 - ix1 + 1) * (iy2 - iy1 + 1) * np.random.uniform(ratio[0], ratio[1])
        side = int(round(math.sqrt(area)))
        if side <= 0:
            continue
        cx = int(np.random.randint(ix1, ix2 + 1))
        cy = int(np.random.randint(iy1, iy2 + 1))
        sx0, sy0 = cx - side // 2, cy - side // 2
        squares[i] = (max(sx0, 0), max(sy0, 0), min(sx0 + side, width), min(sy0 + side, height))
    return squares
