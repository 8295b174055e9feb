"""Per-view augmentation pieces shared by every pretraining mapper.

Geometry is expressed with detectron2 transforms (``CropTransform``,
``ResizeTransform``, ``HFlipTransform`` in a ``TransformList``), so the image,
its boxes (``apply_box``) and its label maps (``apply_segmentation``) always
move together: a view's boxes and masks are in that view's final pixel frame
by construction.  Boxes use continuous coordinates (x2 exclusive), which is
the convention under which crop (shift), resize (scale) and flip
(``x' = W - x``) are exact.

Colour ops act on PIL images and draw from the torch RNG (torchvision's own
ops are used where their semantics match the official recipes); geometry and
cutout draw from ``np.random``.  Both are seeded per sample by the loader.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from detectron2.data import transforms as T
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms import ColorJitter
from torchvision.transforms import functional as TF

__all__ = [
    "INTERPOLATIONS",
    "ViewResize",
    "RandomResizedCrop",
    "WholeImageResize",
    "sample_crop_rect",
    "crop_resize_transform",
    "ColorPipeline",
    "ColorOps",
    "cutout_in_boxes",
    "image_to_tensor",
]

INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def interpolation(name: str) -> int:
    try:
        return INTERPOLATIONS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}; use one of {sorted(INTERPOLATIONS)}") from None


class ViewResize(T.ResizeTransform):
    """detectron2's ``ResizeTransform`` with label maps of any integer dtype.

    detectron2 resizes non-uint8 arrays with ``F.interpolate(mode="nearest")``,
    which samples source pixel ``floor(i * scale)`` and so is shifted by up to
    half a source pixel against PIL's centre-aligned resampling of the image.
    Here integer maps go through PIL's 32-bit mode with NEAREST (pixel-centre
    sampling, like the image), so masks stay aligned with the pixels they label.
    """

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        if segmentation.dtype == np.uint8:
            return super().apply_segmentation(segmentation)
        assert segmentation.shape[:2] == (self.h, self.w), (segmentation.shape, self.h, self.w)
        i32 = np.iinfo(np.int32)
        if segmentation.size and (segmentation.min() < i32.min or segmentation.max() > i32.max):
            raise ValueError("label map values do not fit in int32")
        pil = Image.fromarray(np.ascontiguousarray(segmentation, dtype=np.int32), mode="I")
        out = np.asarray(pil.resize((self.new_w, self.new_h), Image.NEAREST))
        return out.astype(segmentation.dtype, copy=False)


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


class WholeImageResize(T.Augmentation):
    """The whole image resized to ``size x size`` (aspect ratio not kept; SoCo's V1)."""

    def __init__(self, size, interp=Image.BILINEAR):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        return crop_resize_transform((0, 0, w, h), h, w, self.size, self.interp)


# ------------------------------------------------------------------- colour
@dataclass
class ColorOps:
    """The colour operations drawn for one view (kept so tests can count them)."""

    jitter: tuple | None = None  # (order, brightness, contrast, saturation, hue) factors
    grayscale: bool = False
    blur_sigma: float | None = None
    solarize: bool = False


class ColorPipeline:
    """BYOL-style colour pipeline of one view, in the official order:
    ColorJitter (with probability ``jitter_prob``, ops in random order, as
    torchvision), grayscale, Gaussian blur, solarise.

    Blur is PIL's ``GaussianBlur`` with radius sigma ~ U(blur_sigma) (the SoCo,
    MoCo-v2 and DenseCL implementations; no kernel-size rule).  Solarise is
    PIL's (pixels >= 128 inverted).  All draws use the torch RNG.
    """

    def __init__(
        self,
        jitter=(0.4, 0.4, 0.2, 0.1),
        jitter_prob=0.8,
        grayscale_prob=0.2,
        blur_prob=0.0,
        blur_sigma=(0.1, 2.0),
        solarize_prob=0.0,
        solarize_threshold=128,
    ):
        self._jitter = ColorJitter(*jitter)
        self.jitter_prob = float(jitter_prob)
        self.grayscale_prob = float(grayscale_prob)
        self.blur_prob = float(blur_prob)
        self.blur_sigma = tuple(float(s) for s in blur_sigma)
        self.solarize_prob = float(solarize_prob)
        self.solarize_threshold = int(solarize_threshold)

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

    def sample(self) -> ColorOps:
        ops = ColorOps()
        if self._happens(self.jitter_prob):
            j = self._jitter
            ops.jitter = ColorJitter.get_params(j.brightness, j.contrast, j.saturation, j.hue)
        ops.grayscale = self._happens(self.grayscale_prob)
        if self._happens(self.blur_prob):
            ops.blur_sigma = float(torch.empty(1).uniform_(*self.blur_sigma).item())
        ops.solarize = self._happens(self.solarize_prob)
        return ops

    def apply(self, image: Image.Image, ops: ColorOps) -> Image.Image:
        if ops.jitter is not None:
            order, b, c, s, h = ops.jitter
            for fn_id in order:
                if fn_id == 0 and b is not None:
                    image = TF.adjust_brightness(image, b)
                elif fn_id == 1 and c is not None:
                    image = TF.adjust_contrast(image, c)
                elif fn_id == 2 and s is not None:
                    image = TF.adjust_saturation(image, s)
                elif fn_id == 3 and h is not None:
                    image = TF.adjust_hue(image, h)
        if ops.grayscale:
            image = TF.rgb_to_grayscale(image, num_output_channels=3)
        if ops.blur_sigma is not None:
            image = image.filter(ImageFilter.GaussianBlur(radius=ops.blur_sigma))
        if ops.solarize:
            image = ImageOps.solarize(image, self.solarize_threshold)
        return image

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.apply(image, self.sample())


def image_to_tensor(image) -> torch.Tensor:
    """uint8 HWC RGB (numpy or PIL) -> float32 (3, H, W) tensor in 0..255 (not normalised)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    # numpy's cast: torch's .float() on a small tensor pays intra-op threading overhead in workers
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))


# ------------------------------------------------------------------- cutout
def cutout_in_boxes(
    image: torch.Tensor,
    boxes: np.ndarray,
    prob: float = 0.5,
    ratio: tuple[float, float] = (0.1, 0.3),
    fill=(0.0, 0.0, 0.0),
) -> list[tuple[int, int, int, int]]:
    """SoCo's ``RandomCutoutInBbox`` on a (3, H, W) view tensor, in place.

    For each box (duplicates included), with probability ``prob``: a square of
    area U(ratio) x box area, side ``round(sqrt(area))``, centred at a uniform
    random integer pixel inside the box, clipped to the image, filled with
    ``fill`` (the pixel mean, i.e. 0 after normalisation).

    ``boxes`` are the view's final boxes (after flip), continuous XYXY; the box's
    pixels are columns ``floor(x1) .. ceil(x2) - 1`` (and rows alike), and its
    area is counted in those pixels.  Deviation from the official code, on
    purpose: the official cutout used the un-flipped boxes (issue #3) and after
    its fix drew ``random.randint`` on non-integer corners, which raises; here
    integer pixels of the flipped boxes are used.  Returns the squares drawn
    as (x0, y0, x1, y1), x1/y1 exclusive, clipped.
    """
    _, height, width = image.shape
    fill_t = torch.as_tensor(fill, dtype=image.dtype).view(-1, 1, 1)
    squares = []
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
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
        sx0c, sy0c = max(sx0, 0), max(sy0, 0)
        sx1c, sy1c = min(sx0 + side, width), min(sy0 + side, height)
        image[:, sy0c:sy1c, sx0c:sx1c] = fill_t
        squares.append((sx0c, sy0c, sx1c, sy1c))
    return squares
