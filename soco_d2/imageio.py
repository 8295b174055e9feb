"""The one image reader of soco_d2: proposal precompute, the proposal
visualiser and the pretraining mappers all decode files through
:class:`EncodedImage` (:func:`read_rgb` for a whole decode), so the boxes and
label maps in a cache fit exactly the pixels training sees.

Every file either decodes to an RGB uint8 array in the orientation
detectron2's ``read_image`` uses (EXIF applied), or raises :class:`ImageSkip`
with a short, path-free reason (the same on every machine and run).  Unlike
detectron2's ``read_image``, which clips 16-bit images to white, high-bit-depth
files are scaled to 0..255.  This module sits at the start of the data flow
(images -> proposals -> data): it imports nothing from soco_d2.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

DEFAULT_MAX_PIXELS = 250_000_000
EXIF_ORIENTATION = 0x0112
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # rotated by 90 degrees: width and height swap


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


@contextlib.contextmanager
def _reading(path: str, allow_truncated: bool):
    """PIL's own limits off (ours are checked before decoding), truncation as asked, and
    every decoder failure turned into :class:`ImageSkip`."""
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS = None
    ImageFile.LOAD_TRUNCATED_IMAGES = bool(allow_truncated)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except ImageSkip:
        raise
    except FileNotFoundError as e:
        raise ImageSkip("missing", _clean(str(e), path)) from None
    except Image.UnidentifiedImageError:  # PIL names the in-memory buffer: say it the same way every time
        raise ImageSkip("corrupt", "cannot identify image file <file>") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated / broken streams
        category = "truncated" if "truncated" in str(e).lower() else "corrupt"
        raise ImageSkip(category, _clean(f"{type(e).__name__}: {e}", path)) from None
    except MemoryError:
        raise ImageSkip("huge", "out of memory while decoding") from None
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


class EncodedImage:
    """An image file read into memory: ``height`` / ``width`` as displayed (EXIF
    orientation applied) from the header alone, pixels on demand (:meth:`decode`).

    The mappers draw a sample's view geometry from the size before anything is
    decoded, which allows a reduced-size JPEG decode (PIL's ``draft``: the DCT
    scaled by 1/2, 1/4 or 1/8) and handing the bytes to the training device.
    Opening refuses files over ``max_pixels``; every failure is an :class:`ImageSkip`.
    """

    def __init__(self, data: bytes, name: str = "", *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 allow_truncated: bool = False):
        self.data, self.name, self.allow_truncated = data, name, bool(allow_truncated)
        with _reading(name, self.allow_truncated):
            self._image = Image.open(io.BytesIO(data))
            self.format, self.mode = self._image.format, self._image.mode
            width, height = self._image.size
            if width * height > max_pixels:
                raise ImageSkip("huge", f"{width}x{height} = {width * height} pixels > --max-pixels {max_pixels}")
            self.orientation = int(self._image.getexif().get(EXIF_ORIENTATION, 1) or 1)
        if self.orientation in TRANSPOSED_ORIENTATIONS:
            width, height = height, width
        self.height, self.width = int(height), int(width)

    @classmethod
    def read(cls, path: str, **kwargs) -> "EncodedImage":
        with _reading(path, False):
            with open(path, "rb") as f:
                data = f.read()
        return cls(data, path, **kwargs)

    def decode(self, reduction: int = 1) -> np.ndarray:
        """uint8 (H', W', 3) RGB, EXIF orientation applied.  ``reduction`` > 1 (a power of
        two, JPEG only) asks the decoder for an image about that many times smaller
        (``ceil(H / r) x ceil(W / r)``); other formats ignore it."""
        with _reading(self.name, self.allow_truncated):
            image = self._image
            if reduction > 1 and self.format == "JPEG":
                width, height = image.size
                image.draft(image.mode, (-(-width // reduction), -(-height // reduction)))
            image.load()
            if self.orientation != 1:
                image = ImageOps.exif_transpose(image)
            return _to_rgb_array(image)

    def check_complete(self) -> None:
        """For bytes decoded elsewhere (``INPUT.SSL.DECODE_ON device``): a JPEG must end with
        its end-of-image marker, else it is truncated (raises :class:`ImageSkip`)."""
        if self.format == "JPEG" and not self.allow_truncated and not self.data.rstrip(b"\0").endswith(b"\xff\xd9"):
            raise ImageSkip("truncated", "the JPEG data ends before its end-of-image marker")

    def tensor(self):
        """The undecoded bytes as a uint8 tensor (what ``torchvision.io.decode_jpeg`` reads)."""
        import torch

        return torch.frombuffer(bytearray(self.data), dtype=torch.uint8)


def read_rgb(path: str, max_pixels: int = DEFAULT_MAX_PIXELS, allow_truncated: bool = False, return_mode: bool = False):
    """Decode ``path`` to an (H, W, 3) uint8 RGB array with EXIF orientation applied.

    Grayscale, palette, RGBA, CMYK and 16-bit files are converted; files over
    ``max_pixels`` are refused before decoding; truncated files are refused
    unless ``allow_truncated`` (then PIL fills the missing part with grey).
    With ``return_mode``, returns ``(array, PIL mode of the file)``.
    """
    image = EncodedImage.read(path, max_pixels=max_pixels, allow_truncated=allow_truncated)
    rgb = image.decode()
    return (rgb, image.mode) if return_mode else rgb
