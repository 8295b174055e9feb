"""What every multi-view mapper shares: view specs, crop windows, per-view
geometry (detectron2 transforms), colour pipelines, image reading and the
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
from PIL import Image

from ...imageio import ImageSkip, read_rgb
from ..augment import ColorPipeline, ViewResize, crop_resize_transform, image_to_tensor, interpolation, sample_crop_rect

__all__ = ["ViewSpec", "parse_views", "per_view", "pixel_mean_rgb", "LazyCache", "MultiViewMapper", "ViewGeometry"]

MISSING_POLICIES = ("error", "whole_image")


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
    """Views from a dataset dict: crops, resizes, flips and colours, one spec per view.

    Subclasses add what their method carries between views (boxes, masks).
    Randomness: ``np.random`` for geometry, torch for colour (seeded per sample by the loader).
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
        is_train: bool = True,
    ):
        if len(color) != len(views):
            raise ValueError(f"{len(views)} views but {len(color)} colour pipelines")
        self.views = list(views)
        self.crop_scale = tuple(float(s) for s in crop_scale)
        self.crop_ratio = tuple(float(r) for r in crop_ratio)
        self.crop_attempts = int(crop_attempts)
        self.crop_fallback = crop_fallback
        self.interp = interpolation(interp)
        self.flip_prob = float(flip_prob)
        self.color = list(color)
        self.is_train = is_train

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

    def render(self, image: np.ndarray, geoms: list[ViewGeometry]) -> list[np.ndarray]:
        """uint8 view images: crop + resize (a downsampled view resizes its source
        view's image before that one's flip, SoCo*'s V4), then flip."""
        unflipped = []
        for geom in geoms:
            spec = geom.spec
            if spec.kind == "downsample":
                src = unflipped[spec.source]
                unflipped.append(geom.base.transforms[-1].apply_image(src))
            else:
                unflipped.append(np.ascontiguousarray(geom.base.apply_image(image)))
        return [np.ascontiguousarray(img[:, ::-1]) if g.flip else img for img, g in zip(unflipped, geoms)]

    def colorize(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """Each view's colour pipeline, then float32 (3, S, S) in 0..255."""
        return [image_to_tensor(pipe(Image.fromarray(img))) for img, pipe in zip(images, self.color)]

    # ---------------------------------------------------------------- io
    def read_image(self, dataset_dict: dict) -> tuple[dict, np.ndarray]:
        """(shallow copy of the dict, uint8 HWC RGB image).  Views are always RGB,
        whatever INPUT.FORMAT says (the SSL models normalise RGB; see ``pixel_mean_rgb``)."""
        dataset_dict = copy.copy(dataset_dict)
        image = read_rgb(dataset_dict["file_name"])  # the precompute's reader; raises ImageSkip for a bad file
        utils.check_image_size(dataset_dict, image)
        return dataset_dict, image


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
