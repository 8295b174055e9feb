"""What every multi-view mapper shares: view specs, crop windows, per-view
geometry (detectron2 transforms), colour parameters, image reading and the
lazily opened proposal / mask cache."""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ...imageio import EncodedImage, ImageSkip
from ..augment import (
    ColorPipeline,
    ViewResize,
    crop_resize_transform,
    hwc_to_chw,
    interpolation,
    nearest_index,
    render_views,
    sample_crop_rect,
)
from ..collate import collate_views
from ..decode import EncodedViews, draft_reduction
from ..photometric import PhotometricBatch, ViewPhotometry, apply_photometry

__all__ = [
    "ViewSpec",
    "parse_views",
    "per_view",
    "pixel_mean_rgb",
    "photometric_placement",
    "LazyCache",
    "MultiViewMapper",
    "ViewGeometry",
]

logger = logging.getLogger(__name__)

MISSING_POLICIES = ("error", "whole_image")
PHOTOMETRIC_PLACES = ("auto", "model", "mapper")
DECODE_PLACES = ("mapper", "device")


@dataclass(frozen=True)
class ViewSpec:
    """One output view: ``size x size`` pixels, made as ``kind``:
    "whole" (the whole image resized), "crop" (random resized crop) or
    "downsample" (view ``source`` before its flip and colour, resized)."""

    size: int
    kind: str
    source: int | None = None


def parse_views(sizes, types) -> list[ViewSpec]:
    """INPUT.SSL.VIEW_SIZES / VIEW_TYPES -> view specs, validated."""
    sizes, types = list(sizes), list(types)
    if len(sizes) != len(types) or not sizes:
        raise ValueError(f"INPUT.SSL.VIEW_SIZES {sizes} and VIEW_TYPES {types} must be non-empty and of equal length")
    specs = []
    for v, (size, kind) in enumerate(zip(sizes, types)):
        kind = str(kind).strip().lower()
        source = None
        if kind.startswith("downsample"):
            try:
                source = int(kind.split(":", 1)[1])
            except (IndexError, ValueError):
                raise ValueError(f"view {v}: {kind!r} must be 'downsample:J' with J the index of an earlier view") from None
            if not 0 <= source < v or specs[source].kind == "downsample":
                raise ValueError(f"view {v}: 'downsample:{source}' must name an earlier whole/crop view")
            kind = "downsample"
        elif kind not in ("whole", "crop"):
            raise ValueError(f"view {v}: unknown view type {kind!r} (use 'whole', 'crop' or 'downsample:J')")
        if int(size) <= 0:
            raise ValueError(f"view {v}: size must be positive, got {size}")
        specs.append(ViewSpec(int(size), kind, source))
    return specs


def per_view(values, num_views: int, name: str) -> list[float]:
    """A per-view list from config: one entry per view; a shorter list repeats its
    last entry for the remaining views (e.g. [1.0, 0.1] = V1 1.0, all others 0.1)."""
    values = [float(x) for x in (values if isinstance(values, (list, tuple)) else [values])]
    if not values or len(values) > num_views:
        raise ValueError(f"{name} needs 1..{num_views} entries (one per view), got {values}")
    return values + [values[-1]] * (num_views - len(values))


class LazyCache:
    """A box or mask source: a mapping ``{image_id: value}`` (tests, in-memory)
    or the path of a ``soco_d2.proposals.ProposalCache`` file, opened on first
    use once per process (so a mapper pickled into dataloader workers opens its
    own handle instead of sharing one across ``fork``).  ``kind`` ("boxes" or
    "masks") is what the file must hold; :meth:`check` compares the file with
    the dataset at start-up."""

    def __init__(self, source, what: str, missing: str = "error", key: str = "", kind: str | None = None):
        if missing not in MISSING_POLICIES:
            raise ValueError(f"PROPOSALS.MISSING must be one of {MISSING_POLICIES}, got {missing!r}")
        if source is None or (isinstance(source, str) and not source):
            raise ValueError(
                f"no {what} cache given: set {key or 'the PROPOSALS key'} to a cache written by "
                "tools/precompute_proposals.py"
            )
        self.source, self.what, self.missing, self.key, self.kind = source, what, missing, key, kind
        self._opened, self._pid = None, None

    def __getstate__(self):
        state = self.__dict__.copy()
        if isinstance(self.source, str):
            state["_opened"], state["_pid"] = None, None
        return state

    def _cache(self):
        if not isinstance(self.source, str):  # a mapping (or any object with `in` and `[]`)
            return self.source
        if self._opened is None or self._pid != os.getpid():
            from soco_d2.proposals import ProposalCache  # the proposal package sits upstream of the mappers
            from soco_d2.proposals.verify import check_cache_kind

            opened = ProposalCache(self.source)
            check_cache_kind(opened, self.kind, self.key)
            self._opened, self._pid = opened, os.getpid()
        return self._opened

    def check(self, dataset_dicts, dataset_name: str = "") -> None:
        """Fail now, with one message, unless the file holds ``kind`` and every image of
        ``dataset_dicts`` (``soco_d2.proposals.verify.check_cache``).  In-memory sources pass."""
        if isinstance(self.source, str):
            from soco_d2.proposals.verify import check_cache

            check_cache(self.source, self.kind, dataset_dicts, key=self.key,
                        allow_missing=self.missing == "whole_image", dataset_name=dataset_name)

    def lookup(self, image_id: str, image_size: tuple[int, int] | None = None):
        """The cached value, or None when the image is missing and the policy is "whole_image".

        With ``image_size`` (H, W of the decoded image) and a cache that records the
        size it was computed on (``ProposalCache.image_size``), a mismatch raises:
        boxes of another version of the image would silently land in the wrong place.
        """
        cache = self._cache()
        if image_id in cache:
            value = cache[image_id]
            if image_size is not None and hasattr(cache, "image_size"):
                cached = tuple(int(x) for x in cache.image_size(image_id))
                if cached != tuple(image_size):
                    raise ValueError(
                        f"the {self.what} cache {self.source!r} was computed on a {cached[0]}x{cached[1]} version of "
                        f"image {image_id!r}, but the dataset's image is {image_size[0]}x{image_size[1]}; "
                        "recompute the cache for this dataset"
                    )
            return value
        skipped = getattr(cache, "skipped", {}).get(image_id)
        if skipped is not None and self.missing != "whole_image":  # the precompute could not use it either
            raise ImageSkip("skipped", f"the {self.what} cache lists it as skipped ({skipped})")
        if self.missing == "whole_image":
            return None
        name = self.source if isinstance(self.source, str) else f"in-memory {type(self.source).__name__}"
        raise KeyError(
            f"image_id {image_id!r} has no entry in the {self.what} cache {name!r} ({len(cache)} entries); "
            "the cache does not match the dataset (recompute it with tools/precompute_proposals.py) "
            "or set PROPOSALS.MISSING whole_image"
        )


@dataclass
class ViewGeometry:
    """The geometry drawn for one view: crop window in original pixels, flip, and
    the detectron2 transforms that map the original image into the view."""

    spec: ViewSpec
    rect: tuple[int, int, int, int]
    flip: bool
    base: T.TransformList  # original image -> view, before flip
    transforms: T.TransformList  # original image -> final view (base + flip)


class MultiViewMapper:
    """Views from a dataset dict: crops, resizes and flips (here), colour
    parameters (drawn here, applied where ``photometric_on`` says), one spec per view.

    Subclasses add what their method carries between views (boxes, masks) and
    their ``collate``.  Randomness: ``np.random`` for geometry, torch for colour
    (seeded per sample by the loader).  Each image is read and decoded once.
    """

    def __init__(
        self,
        *,
        views: list[ViewSpec],
        crop_scale=(0.08, 1.0),
        crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
        crop_attempts: int = 10,
        crop_fallback: str = "center",
        interp: str = "bilinear",
        flip_prob: float = 0.5,
        color: list[ColorPipeline],
        photometric_on: str = "mapper",
        pixel_mean=(123.675, 116.28, 103.53),
        jpeg_draft: bool = False,
        decode_on: str = "mapper",
    ):
        """
        Args:
            photometric_on: "mapper" (views leave as float32 RGB 0..255 with the colour
                ops applied) or "model" (uint8 views plus their ``ViewPhotometry``).
            pixel_mean: RGB, the cutout fill of views coloured here.
            jpeg_draft: decode JPEGs at 1/2, 1/4 or 1/8 size when every view still
                downsamples its crop (``soco_d2.data.decode``).
            decode_on: "mapper" (decode and render here) or "device" (send the file's
                bytes and the views' geometry; the model decodes JPEGs with
                ``torchvision.io.decode_jpeg`` on its device and renders the views).
        """
        if len(color) != len(views):
            raise ValueError(f"{len(views)} views but {len(color)} colour pipelines")
        if photometric_on not in ("model", "mapper"):
            raise ValueError(f"photometric_on must be 'model' or 'mapper', got {photometric_on!r}")
        self.views = list(views)
        self.crop_scale = tuple(float(s) for s in crop_scale)
        self.crop_ratio = tuple(float(r) for r in crop_ratio)
        self.crop_attempts = int(crop_attempts)
        self.crop_fallback = crop_fallback
        self.interp = interpolation(interp)
        self.flip_prob = float(flip_prob)
        self.color = list(color)
        self.photometric_on = photometric_on
        self.pixel_mean = tuple(float(m) for m in pixel_mean)
        self.jpeg_draft = bool(jpeg_draft)
        if decode_on not in DECODE_PLACES:
            raise ValueError(f"INPUT.SSL.DECODE_ON must be one of {DECODE_PLACES}, got {decode_on!r}")
        if decode_on == "device" and photometric_on != "model":
            raise ValueError("INPUT.SSL.DECODE_ON 'device' needs the colour ops on the device too: "
                             "set INPUT.SSL.PHOTOMETRIC_ON model")
        self.decode_on = decode_on

    @classmethod
    def base_kwargs(cls, cfg) -> dict:
        s = cfg.INPUT.SSL
        views = parse_views(s.VIEW_SIZES, s.VIEW_TYPES)
        n = len(views)
        blur = per_view(s.BLUR_PROBS, n, "INPUT.SSL.BLUR_PROBS")
        solarize = per_view(s.SOLARIZE_PROBS, n, "INPUT.SSL.SOLARIZE_PROBS")
        color = [
            ColorPipeline(
                jitter=tuple(s.COLOR_JITTER),
                jitter_prob=s.JITTER_PROB,
                grayscale_prob=s.GRAYSCALE_PROB,
                blur_prob=blur[v],
                blur_sigma=tuple(s.BLUR_SIGMA),
                solarize_prob=solarize[v],
            )
            for v in range(n)
        ]
        return {
            "views": views,
            "crop_scale": tuple(s.CROP_SCALE),
            "crop_ratio": tuple(s.CROP_RATIO),
            "crop_attempts": s.CROP_ATTEMPTS,
            "crop_fallback": s.CROP_FALLBACK,
            "interp": s.INTERPOLATION,
            "flip_prob": s.FLIP_PROB,
            "color": color,
            "photometric_on": photometric_placement(cfg),
            "pixel_mean": pixel_mean_rgb(cfg),
            "jpeg_draft": s.JPEG_DRAFT,
            "decode_on": str(s.DECODE_ON).strip().lower(),
        }

    # ------------------------------------------------------------ geometry
    def sample_rects(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """Every view's crop window in original pixels (downsampled views share their source's)."""
        rects = []
        for spec in self.views:
            if spec.kind == "whole":
                rects.append((0, 0, width, height))
            elif spec.kind == "crop":
                rects.append(
                    sample_crop_rect(height, width, self.crop_scale, self.crop_ratio, self.crop_attempts, self.crop_fallback)
                )
            else:
                rects.append(rects[spec.source])
        return rects

    def sample_flips(self) -> list[bool]:
        # one draw per view, as detectron2's RandomFlip (np.random.uniform < prob)
        return [bool(np.random.uniform() < self.flip_prob) for _ in self.views]

    def geometry(self, rects, flips, height: int, width: int) -> list[ViewGeometry]:
        out = []
        for v, spec in enumerate(self.views):
            if spec.kind == "downsample":
                src = out[spec.source]
                base = T.TransformList(
                    list(src.base.transforms) + [ViewResize(src.spec.size, src.spec.size, spec.size, spec.size, self.interp)]
                )
            else:
                base = crop_resize_transform(rects[v], height, width, spec.size, self.interp)
            full = base + T.HFlipTransform(spec.size) if flips[v] else T.TransformList(list(base.transforms))
            out.append(ViewGeometry(spec, tuple(rects[v]), bool(flips[v]), base, full))
        return out

    def render(self, image: np.ndarray, geoms: list[ViewGeometry], height: int | None = None,
               width: int | None = None) -> list[torch.Tensor]:
        """uint8 (3, S, S) view images: crop + resize (a downsampled view resizes its
        source view's image before that one's flip, SoCo*'s V4), then flip
        (``soco_d2.data.augment.render_views``; ``image`` may be a reduced decode of the
        ``height x width`` image the windows were drawn on)."""
        return render_views(hwc_to_chw(image), *self._view_geometry(geoms), self.interp, height, width)

    @staticmethod
    def _view_geometry(geoms: list[ViewGeometry]):
        return ([g.rect for g in geoms], [g.flip for g in geoms], [g.spec.size for g in geoms],
                [g.spec.source if g.spec.kind == "downsample" else None for g in geoms])

    def make_views(self, image: EncodedImage, geoms: list[ViewGeometry]):
        """The views (``render`` of the one decode), or with ``decode_on`` "device" an
        ``EncodedViews`` the model decodes and renders."""
        if self.decode_on == "device":
            return EncodedViews.of(image, *self._view_geometry(geoms), self.interp)
        return self.render(self.decode(image, geoms), geoms, image.height, image.width)

    def render_label_maps(self, label: np.ndarray, geoms: list[ViewGeometry], height: int,
                          width: int) -> list[np.ndarray]:
        """Each view's label map: ``label`` (stretched over the ``height x width`` image by
        nearest resampling, at whatever resolution it is stored) cropped, nearest-resized
        and flipped with the view.  The same pixels as ``geom.transforms.apply_segmentation``
        of the map resized to the image, from composed pixel indices, without making
        that full-resolution map."""
        to_label_rows, to_label_cols = nearest_index(label.shape[0], height), nearest_index(label.shape[1], width)
        unflipped, maps = [], []
        for geom in geoms:
            size = geom.spec.size
            if geom.spec.kind == "downsample":
                src_rows, src_cols = unflipped[geom.spec.source]
                rows, cols = src_rows[nearest_index(len(src_rows), size)], src_cols[nearest_index(len(src_cols), size)]
            else:
                x0, y0, w, h = geom.rect
                rows, cols = y0 + nearest_index(h, size), x0 + nearest_index(w, size)
            unflipped.append((rows, cols))
            cols = cols[::-1] if geom.flip else cols
            maps.append(label[to_label_rows[rows][:, None], to_label_cols[cols][None, :]])
        return maps

    # ------------------------------------------------------------ colour
    def sample_photometry(self) -> list[ViewPhotometry]:
        """Each view's colour parameters (torch RNG), in view order."""
        return [pipe.sample() for pipe in self.color]

    def finish_views(self, views: list[torch.Tensor], photometry: list[ViewPhotometry]) -> dict:
        """The views as they leave the mapper: uint8 + parameters ("model"), or float32
        0..255 with the colour ops (and cutout, filled with the mean) applied ("mapper")."""
        if isinstance(views, EncodedViews):
            return {"encoded": views, "photometric": photometry}
        if self.photometric_on == "model":
            return {"views": views, "photometric": photometry}
        coloured = [
            apply_photometry(view[None], PhotometricBatch.from_views([ops]), self.pixel_mean, (1.0, 1.0, 1.0),
                             normalize=False)[0]
            for view, ops in zip(views, photometry)
        ]
        return {"views": coloured}

    # ---------------------------------------------------------------- io
    def open_image(self, dataset_dict: dict) -> tuple[dict, EncodedImage]:
        """(shallow copy of the dict, the image file read but not decoded; its size is
        checked against the dict's)."""
        dataset_dict = copy.copy(dataset_dict)
        image = EncodedImage.read(dataset_dict["file_name"])  # the precompute's reader; raises ImageSkip for a bad file
        # detectron2's size check (and its filling of missing height / width), before any decoding
        utils.check_image_size(dataset_dict, np.empty((image.height, image.width, 0), dtype=np.uint8))
        return dataset_dict, image

    def decode(self, image: EncodedImage, geoms: list[ViewGeometry]) -> np.ndarray:
        """uint8 (H, W, 3) RGB, the one decode of the sample.  Views are always RGB,
        whatever INPUT.FORMAT says (the SSL models normalise RGB; see ``pixel_mean_rgb``)."""
        reduction = 1
        if self.jpeg_draft:
            crops = [min(g.rect[2], g.rect[3]) for g in geoms if g.spec.kind != "downsample"]
            reduction = draft_reduction(crops, [g.spec.size for g in geoms if g.spec.kind != "downsample"])
        return image.decode(reduction)

    def collate(self, samples: list[dict]) -> dict:
        """This mapper's samples -> one batch (``soco_d2.data.collate``)."""
        return collate_views(samples)


def photometric_placement(cfg) -> str:
    """``INPUT.SSL.PHOTOMETRIC_ON`` resolved: "auto" is "model" when the model trains on
    CUDA (the device applies colour ops far faster than the workers) and "mapper" otherwise."""
    value = str(cfg.INPUT.SSL.PHOTOMETRIC_ON).strip().lower()
    if value not in PHOTOMETRIC_PLACES:
        raise ValueError(f"INPUT.SSL.PHOTOMETRIC_ON must be one of {PHOTOMETRIC_PLACES}, got {value!r}")
    if value == "auto":
        value = "model" if str(cfg.MODEL.DEVICE).startswith("cuda") else "mapper"
        logger.info("INPUT.SSL.PHOTOMETRIC_ON auto -> %s (MODEL.DEVICE %s)", value, cfg.MODEL.DEVICE)
    else:
        logger.info("INPUT.SSL.PHOTOMETRIC_ON %s", value)
    return value


def pixel_mean_rgb(cfg) -> tuple[float, float, float]:
    """MODEL.PIXEL_MEAN in RGB order (the cutout fill).  The pretraining configs set
    INPUT.FORMAT RGB; with detectron2's default BGR the mean is read reversed and a
    warning says the model would normalise RGB views with a BGR mean."""
    mean = tuple(float(m) for m in cfg.MODEL.PIXEL_MEAN)
    if len(mean) != 3:
        raise ValueError(f"MODEL.PIXEL_MEAN must have 3 entries, got {mean}")
    if cfg.INPUT.FORMAT != "RGB":
        logging.getLogger(__name__).warning(
            "INPUT.FORMAT is %s but SSL mappers produce RGB views; set INPUT.FORMAT RGB and "
            "MODEL.PIXEL_MEAN/STD in RGB order", cfg.INPUT.FORMAT
        )
        mean = mean[::-1]
    return mean
