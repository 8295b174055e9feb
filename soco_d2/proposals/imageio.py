"""Robust image decoding for precomputation: every file either decodes to an
RGB uint8 array in the orientation detectron2's ``read_image`` uses (EXIF
applied), or raises :class:`ImageSkip` with a short, path-free reason, so one
bad file never stops a run over millions."""
from __future__ import annotations

import os
import warnings

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps

# EXIF orientations that swap width and height.
_TRANSPOSED = (5, 6, 7, 8)
DEFAULT_MAX_PIXELS = 250_000_000


class ImageSkip(Exception):
    """An image that cannot be used; ``category`` groups the summary counts."""

    def __init__(self, category: str, reason: str):
        super().__init__(f"{category}: {reason}")
        self.category = category
        self.reason = reason


def _clean(msg: str, path: str) -> str:
    """The message without the file's path (reasons must be the same on every machine and run)."""
    for p in (repr(os.path.abspath(path)), repr(path), os.path.abspath(path), path):  # fixed order: deterministic
        msg = msg.replace(p, "<file>")
    return " ".join(msg.split())[:200]


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def read_rgb(path: str, max_pixels: int = DEFAULT_MAX_PIXELS, allow_truncated: bool = False, return_mode: bool = False):
    """Decode ``path`` to an (H, W, 3) uint8 RGB array with EXIF orientation applied.

    Grayscale, palette, RGBA, CMYK and 16-bit files are converted; files over
    ``max_pixels`` are refused before decoding; truncated files are refused
    unless ``allow_truncated`` (then PIL fills the missing part with grey).
    With ``return_mode``, returns ``(array, PIL mode of the file)``.
    """
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS = None  # our own limit below, checked before decoding
    ImageFile.LOAD_TRUNCATED_IMAGES = bool(allow_truncated)
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageSkip("huge", f"{w}x{h} = {w * h} pixels > --max-pixels {max_pixels}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im.load()
                mode = im.mode
                im = ImageOps.exif_transpose(im)
            rgb = _to_rgb_array(im)
            return (rgb, mode) if return_mode else rgb
    except ImageSkip:
        raise
    except FileNotFoundError as e:
        raise ImageSkip("missing", _clean(str(e), path)) from None
    except Image.UnidentifiedImageError as e:
        raise ImageSkip("corrupt", _clean(str(e), path)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated / broken streams
        category = "truncated" if "truncated" in str(e).lower() else "corrupt"
        raise ImageSkip(category, _clean(f"{type(e).__name__}: {e}", path)) from None
    except MemoryError:
        raise ImageSkip("huge", "out of memory while decoding") from None
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def resize_max_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so the longer side is ``max_side`` (aspect kept; never upscales; 0 = off)."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image
    s = max_side / max(h, w)
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def resize_labels(labels: np.ndarray, max_side: int) -> np.ndarray:
    """Nearest-neighbour downscale of a label map (longer side ``max_side``; 0 = off)."""
    h, w = labels.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return labels
    s = max_side / max(h, w)
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    # pixel centres of the small map, sampled in the big one (exact, no dtype limits)
    ys = np.minimum(((np.arange(nh) + 0.5) * h / nh).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(nw) + 0.5) * w / nw).astype(np.int64), w - 1)
    return labels[ys[:, None], xs[None, :]]
