"""The one image reader of soco_d2: proposal precompute, the proposal
visualiser and the pretraining mappers all decode files with :func:`read_rgb`,
so the boxes and label maps in a cache fit exactly the pixels training sees.

Every file either decodes to an RGB uint8 array in the orientation
detectron2's ``read_image`` uses (EXIF applied), or raises :class:`ImageSkip`
with a short, path-free reason (the same on every machine and run).  Unlike
detectron2's ``read_image``, which clips 16-bit images to white, high-bit-depth
files are scaled to 0..255.  This module sits at the start of the data flow
(images -> proposals -> data): it imports nothing from soco_d2.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

DEFAULT_MAX_PIXELS = 250_000_000


class ImageSkip(Exception):
    """An image that cannot be used; ``category`` (corrupt, truncated, missing,
    huge) groups the summary counts, ``reason`` says why without the path."""

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
    """uint8 RGB; 16-bit and 32-bit grayscale are scaled (65535 or 255 -> 255), not clipped."""
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
