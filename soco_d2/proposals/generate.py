"""One image -> one cache record: decode, resize, segment, map back, filter.

:class:`ProposalSpec` is everything that determines the output (it goes into
the cache header, so a cache says exactly how it was made);
:func:`process_image` is what a worker process runs per image and never
raises for a bad image (it returns a skip with a reason instead).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import codec
from .backends import METHOD_BACKENDS, consecutive_labels, build_backend, package_version
from .boxes import map_boxes_to_original
from .filters import FilterPolicy
from ..imageio import DEFAULT_MAX_PIXELS, ImageSkip, read_rgb
from .resize import resize_labels, resize_max_side

METHOD_KIND = {"selective_search": "boxes", "felzenszwalb": "masks"}


@dataclass
class ProposalSpec:
    method: str = "selective_search"
    backend: str = "opencv_ss"
    params: dict = field(default_factory=dict)
    # Longest image side the backend sees (0 = full resolution); results are
    # mapped back to original pixels (boxes) or stored at this size (masks).
    max_side: int = 0
    # Scale the backend's size-like parameters (FH k and min_size by s^2,
    # sigma by s) with the resize factor s, so segments keep their size
    # relative to the image.
    scale_params: bool = False
    filter: FilterPolicy = field(default_factory=FilterPolicy)  # boxes only
    mask_max_side: int = 0  # masks: longest side of the stored label map (0 = as segmented)
    min_image_side: int = 8  # smaller images are not segmented (whole image / one segment)
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are skipped before decoding
    allow_truncated: bool = False  # decode truncated files (PIL fills the rest) instead of skipping
    preset: str = ""

    def __post_init__(self):
        if self.method not in METHOD_KIND:
            raise ValueError(f"--method must be one of {', '.join(METHOD_KIND)}, not {self.method!r}")
        if self.backend not in METHOD_BACKENDS[self.method]:
            raise ValueError(
                f"backend {self.backend!r} does not compute {self.method}; choose from {', '.join(METHOD_BACKENDS[self.method])}"
            )
        for name in ("max_side", "mask_max_side", "min_image_side", "max_pixels"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.min_image_side < 1:
            raise ValueError("min_image_side must be >= 1")
        if isinstance(self.filter, dict):
            self.filter = FilterPolicy.from_dict(self.filter)
        self.params = dict(build_backend(self.backend, **self.params).params)  # validates, canonical

    @property
    def kind(self) -> str:
        return METHOD_KIND[self.method]

    def build_backend(self):
        return build_backend(self.backend, **self.params)

    def header(self) -> dict:
        """The ``generator`` header field: every setting that changes the output."""
        d = asdict(self)
        d.pop("method")
        if self.kind == "boxes":
            d["filter"] = self.filter.to_dict()
            d["filter_stages"] = list(self.filter.stages)
            d.pop("mask_max_side")
        else:
            d.pop("filter")
        return d

    def versions(self) -> dict:
        """Versions of everything that can change the output (decoder, resize, backend)."""
        import cv2

        v = {"numpy": package_version("numpy"), "pillow": package_version("pillow"), "opencv": cv2.__version__,
             "soco_d2": package_version("soco_d2")}
        v.update(type(self.build_backend()).versions())
        return dict(sorted(v.items()))


class ProposalGenerator:
    """Callable ``rgb uint8 (H, W, 3) -> record bytes`` for one spec."""

    def __init__(self, spec: ProposalSpec):
        self.spec = spec
        self.backend = spec.build_backend()

    def boxes(self, image: np.ndarray, return_grid: bool = False):
        """(kept int64 XYXY boxes in original pixels, stage code, raw proposal count
        [, (h, w) of the image the backend saw])."""
        s = self.spec
        H, W = image.shape[:2]
        grid = (H, W)
        if min(H, W) < s.min_image_side:
            raw = np.zeros((0, 4), np.int64)
        else:
            small = resize_max_side(image, s.max_side)
            grid = small.shape[:2]
            backend = self.backend.scaled(small.shape[1] / W) if s.scale_params else self.backend
            raw = map_boxes_to_original(backend(small), grid, (H, W))
        kept, stage = s.filter.apply(raw, H, W)
        return (kept, stage, len(raw), grid) if return_grid else (kept, stage, len(raw))

    def labels(self, image: np.ndarray) -> np.ndarray:
        """Label map (ids 0..n-1) at the stored resolution."""
        s = self.spec
        H, W = image.shape[:2]
        if min(H, W) < s.min_image_side:
            return resize_labels(np.zeros((H, W), np.int32), s.mask_max_side or s.max_side)
        small = resize_max_side(image, s.max_side)
        backend = self.backend.scaled(small.shape[1] / W) if s.scale_params else self.backend
        labels = backend(small)
        if s.mask_max_side:
            # ids that vanish in the nearest-neighbour downscale are renumbered away
            labels = consecutive_labels(resize_labels(labels, s.mask_max_side))
        return labels

    def record(self, image: np.ndarray) -> tuple:
        """(record bytes, info dict) for a decoded image."""
        H, W = image.shape[:2]
        if self.spec.kind == "boxes":
            kept, stage, raw, grid = self.boxes(image, return_grid=True)
            return codec.encode_boxes(kept, H, W, stage, grid), {"raw": raw, "kept": len(kept), "stage": stage}
        labels = self.labels(image)
        return codec.encode_mask(labels, H, W), {"segments": int(labels.max()) + 1}


def process_image(gen: ProposalGenerator, image_id: str, file_name: str) -> dict:
    """Worker entry point: never raises for a bad image.

    Returns ``{"image_id", "ok": True, "record", "info", "tiny", "seconds"}`` or
    ``{"image_id", "ok": False, "category", "reason"}``.
    """
    t0 = time.perf_counter()
    spec = gen.spec
    try:
        image, mode = read_rgb(file_name, spec.max_pixels, spec.allow_truncated, return_mode=True)
        record, info = gen.record(image)
    except ImageSkip as e:
        return {"image_id": image_id, "ok": False, "category": e.category, "reason": e.reason}
    except MemoryError:
        return {"image_id": image_id, "ok": False, "category": "huge", "reason": "out of memory"}
    except Exception as e:  # a backend failing on one odd image must not stop the run
        return {"image_id": image_id, "ok": False, "category": "error", "reason": f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"}
    tiny = min(image.shape[:2]) < spec.min_image_side
    return {"image_id": image_id, "ok": True, "record": record, "info": info, "tiny": tiny, "mode": mode,
            "seconds": time.perf_counter() - t0}
