"""Shims that let detectron2 0.6 run on Python 3.11-3.13, numpy 2, Pillow >= 10,
setuptools >= 82 and torch 2.14, without its compiled ``_C`` extension.

Every shim restores exactly one missing thing and does nothing when that thing
is already there, so a detectron2 built from source (or a recent release) on an
older stack is left untouched.  ``apply()`` runs the shims that must precede the
first ``import detectron2.<anything>``; ``soco_d2/__init__.py`` calls it before
anything else, and every entry point (tools, spawned workers) imports
``soco_d2`` first.  ``apply_after_import()`` patches detectron2 modules once
they are loaded (COCOeval fallback, MapDataset's retry);
``patch_cityscapes_evaluation()`` patches cityscapesscripts when it is used.

``APPLIED`` lists the names of the shims that actually changed something in
this process; ``python -m soco_d2.compat`` prints it.  ``SHIMMED_APIS`` says
which removed API each shim restores, in the names ``soco_d2.compat_audit``
(``tools/audit_detectron2.py``) reports.  This is the only module of soco_d2
that patches third-party code.
"""
from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import json
import os
import random
import sys
import types
import warnings

APPLIED: list[str] = []

# Removed or changed API (audit name, or "API@file:function" when the shim fixes
# one place) -> the shim below that restores it.
SHIMMED_APIS: dict[str, str] = {
    "detectron2._C": "compiled_ops_placeholder",
    "detectron2._C.get_compiler_version": "compiled_ops_placeholder",
    "detectron2._C.get_cuda_version": "compiled_ops_placeholder",
    "detectron2._C.has_cuda": "compiled_ops_placeholder",
    # utils/collect_env.py reads _C.__file__ only when the placeholder's has_cuda() is True.
    "detectron2._C.__file__@detectron2/utils/collect_env.py:collect_env_info": "compiled_ops_placeholder",
    # evaluation/fast_eval_api.py: COCOEvaluator falls back to pycocotools.
    "detectron2._C.InstanceAnnotation": "cocoeval_fallback",
    "detectron2._C.COCOevalEvaluateImages": "cocoeval_fallback",
    "detectron2._C.COCOevalAccumulate": "cocoeval_fallback",
    "PIL.Image.LINEAR": "pillow_linear",
    "numpy.int": "numpy_aliases",
    "numpy.float": "numpy_aliases",
    "numpy.str": "numpy_aliases",
    "numpy.object": "numpy_aliases",
    "numpy.bool": "numpy_aliases",
    "numpy.in1d": "numpy_in1d",
    "numpy.percentile(interpolation=)": "numpy_percentile_interpolation",
    "pkg_resources": "pkg_resources_stub",
    "caffe2": "caffe2_placeholder",
    "random.Random.sample(set)@detectron2/data/common.py:MapDataset.__getitem__": "mapdataset_set_sampling",
}

INSTALL_HINT = (
    "soco_d2 needs detectron2, which is not on PyPI. Install it with\n"
    "    make venv                 (creates .venv with everything), or\n"
    "    python tools/install_detectron2.py   (into the current environment),\n"
    "or build it from source with CUDA ops:\n"
    "    pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'"
)

# Features that need the compiled ops, named in the placeholder's error.
_COMPILED_FEATURES = (
    "rotated boxes (RotatedBoxes IoU, nms_rotated, ROIAlignRotated, RRPN), "
    "modulated deformable conv (DEFORM_MODULATED) and deformable conv on CUDA, "
    "and the fast C++ COCOeval"
)


class MissingCompiledOpsError(RuntimeError):
    """A detectron2 feature that needs the compiled ``detectron2._C`` ops was used."""


class MissingCaffe2Error(RuntimeError):
    """detectron2's Caffe2 export was used; PyTorch no longer ships caffe2."""


def require_detectron2() -> None:
    """Fail with one clear message when detectron2 is not importable."""
    if importlib.util.find_spec("detectron2") is None:
        raise ImportError("detectron2 is not installed.\n" + INSTALL_HINT)


def has_compiled_ops() -> bool:
    mod = sys.modules.get("detectron2._C")
    if mod is not None:
        return not getattr(mod, "__soco_d2_placeholder__", False)
    return importlib.util.find_spec("detectron2._C") is not None


def _placeholder_getattr(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise MissingCompiledOpsError(
        f"detectron2._C.{name} is unavailable: this detectron2 was installed without its "
        f"compiled ops, which provide {_COMPILED_FEATURES}. Build detectron2 from source "
        "(see README, 'detectron2 with CUDA ops') to use them."
    )


def _shim_compiled_ops_placeholder() -> None:
    # detectron2 0.6 does `from detectron2 import _C` at import of layers/ and
    # evaluation/, and utils/collect_env.py asks _C for compiler/CUDA versions.
    if has_compiled_ops():
        return
    mod = types.ModuleType("detectron2._C", "placeholder for detectron2's missing compiled ops (soco_d2.compat)")
    mod.__soco_d2_placeholder__ = True
    mod.get_compiler_version = lambda: "none (python-only install)"
    mod.get_cuda_version = lambda: "none (python-only install)"
    mod.has_cuda = lambda: False
    mod.__getattr__ = _placeholder_getattr
    sys.modules["detectron2._C"] = mod
    APPLIED.append("compiled_ops_placeholder")


_TORCH_LIBRARIES: list = []  # torch.library.Library objects must stay alive


def _raise_nms_rotated(*args, **kwargs):
    _placeholder_getattr("nms_rotated")


def _shim_nms_rotated_placeholder() -> None:
    # layers/nms.py calls torch.ops.detectron2.nms_rotated, which only the
    # compiled extension registers; define it so its use names what is missing.
    if has_compiled_ops():
        return
    import torch

    try:
        torch.ops.detectron2.nms_rotated
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("detectron2", "FRAGMENT")
    lib.define("nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms_rotated", _raise_nms_rotated, "CompositeExplicitAutograd")
    _TORCH_LIBRARIES.append(lib)
    APPLIED.append("nms_rotated_placeholder")


def _shim_pillow_linear() -> None:
    # data/transforms/transform.py: ExtentTransform's default interp=Image.LINEAR
    # is evaluated at import; Pillow 10 removed LINEAR.
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR
        APPLIED.append("pillow_linear")


_NUMPY_ALIASES = {"int": int, "float": float, "str": str, "object": object, "bool": bool}


def _shim_numpy_aliases() -> None:
    # np.str in pascal_voc.py, np.int in data/build.py and sem_seg_evaluation.py,
    # np.float in sem_seg_evaluation.py, np.bool in structures/masks.py (numpy<2).
    import numpy as np

    added = [name for name in _NUMPY_ALIASES if name not in np.__dict__]
    for name in added:
        setattr(np, name, _NUMPY_ALIASES[name])
    if added:
        APPLIED.append("numpy_aliases:" + ",".join(added))


def _numpy_in1d(ar1, ar2, assume_unique=False, invert=False, *, kind=None):
    import numpy as np

    return np.isin(np.ravel(ar1), ar2, assume_unique=assume_unique, invert=invert, kind=kind)


def _shim_numpy_in1d() -> None:
    # cityscapesscripts 2.3 evaluation (assignGt2Preds) calls np.in1d, removed in numpy 2.4.
    import numpy as np

    if "in1d" not in np.__dict__:
        np.in1d = _numpy_in1d
        APPLIED.append("numpy_in1d")


def _accepting_interpolation(func):
    @functools.wraps(func)
    def wrapper(*args, interpolation=None, **kwargs):
        if interpolation is not None:  # numpy < 2.4 took it as the old name of method=
            if kwargs.get("method", "linear") != "linear":
                raise TypeError(f"{func.__name__}: give method= or interpolation=, not both")
            kwargs["method"] = interpolation
        return func(*args, **kwargs)

    wrapper.__soco_d2_shim__ = True
    return wrapper


def _shim_numpy_percentile_interpolation() -> None:
    # data/benchmark.py (DataLoaderBenchmark._log_time) calls
    # np.percentile(..., interpolation="nearest"); numpy 2.4 removed the keyword.
    import inspect

    import numpy as np

    if getattr(np.percentile, "__soco_d2_shim__", False) or "interpolation" in inspect.signature(
        np.percentile
    ).parameters:
        return
    for name in ("percentile", "nanpercentile", "quantile", "nanquantile"):
        setattr(np, name, _accepting_interpolation(getattr(np, name)))
    APPLIED.append("numpy_percentile_interpolation")


_CAFFE2_STUBS: dict[tuple[str, str], type] = {}


class _Caffe2Stub:
    def __init__(self, *args, **kwargs):
        raise MissingCaffe2Error(
            f"{type(self).__module__}.{type(self).__name__} is unavailable: PyTorch removed its caffe2 "
            "Python package (2.4), so detectron2's Caffe2/ONNX-Caffe2 export cannot run. "
            "TorchScript export (detectron2.export.TracingAdapter, scripting_with_instances) works."
        )


def _caffe2_getattr(module_name: str, attr: str):
    if attr.startswith("__"):
        raise AttributeError(attr)
    if attr.islower():  # caffe2's modules are lower case (core, workspace, caffe2_pb2)
        return importlib.import_module(f"{module_name}.{attr}")
    key = (module_name, attr)
    if key not in _CAFFE2_STUBS:  # a class, so annotations and isinstance() at import time work
        _CAFFE2_STUBS[key] = type(attr, (_Caffe2Stub,), {"__module__": module_name})
    return _CAFFE2_STUBS[key]


class _Caffe2PlaceholderFinder:
    """Meta-path finder that answers every ``caffe2[.*]`` import with a placeholder module."""

    def find_spec(self, name, path=None, target=None):
        if name == "caffe2" or name.startswith("caffe2."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__soco_d2_placeholder__ = True
        module.__getattr__ = functools.partial(_caffe2_getattr, module.__name__)


def _shim_caffe2_placeholder() -> None:
    # export/api.py, export/shared.py, export/caffe2_*.py import caffe2 at module
    # level, and detectron2.export is imported by utils/analysis.py (FLOP counting)
    # and needed for TorchScript export; PyTorch stopped shipping caffe2 in 2.4.
    if any(isinstance(f, _Caffe2PlaceholderFinder) for f in sys.meta_path):
        return
    if "caffe2" in sys.modules or importlib.util.find_spec("caffe2") is not None:
        return
    sys.meta_path.append(_Caffe2PlaceholderFinder())
    APPLIED.append("caffe2_placeholder")


def _resource_filename(package: str, resource: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(package)
    return os.path.join(list(spec.submodule_search_locations)[0], resource)


def _pkg_resources_getattr(attr: str):
    raise AttributeError(
        f"pkg_resources.{attr}: setuptools >= 82 removed pkg_resources; soco_d2's stand-in "
        "only provides resource_filename (for detectron2.model_zoo)"
    )


class _PkgResourcesFinder:
    """Meta-path finder that provides a minimal ``pkg_resources`` when it is imported
    (not before, so tools that probe ``sys.modules`` for it are not misled)."""

    def find_spec(self, name, path=None, target=None):
        if name == "pkg_resources":
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__doc__ = "minimal stand-in for detectron2.model_zoo (soco_d2.compat)"
        module.__soco_d2_placeholder__ = True
        module.resource_filename = _resource_filename
        module.fixup_namespace_packages = lambda *args, **kwargs: None  # no pkg_resources namespaces exist
        module.__getattr__ = _pkg_resources_getattr


def _shim_pkg_resources() -> None:
    # model_zoo/model_zoo.py imports pkg_resources (gone in setuptools >= 82) for
    # resource_filename only.
    if any(isinstance(f, _PkgResourcesFinder) for f in sys.meta_path):
        return
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return
    sys.meta_path.append(_PkgResourcesFinder())
    APPLIED.append("pkg_resources_stub")


def _silence_known_warnings() -> None:
    # torch 2.14 deprecations raised by detectron2 0.6 code at import/run time;
    # they are harmless here and would break `pytest -W error`.
    for message in (
        r"`torch\.jit\.script` is deprecated",
        r"torch\.jit\.script.*deprecated",
        r"torch\.meshgrid: in an upcoming release",
        r"TypedStorage is deprecated",
        r"`torch\.cuda\.amp\.(GradScaler|autocast)\(args\.\.\.\)` is deprecated",
    ):
        warnings.filterwarnings("ignore", message=message)


def apply() -> list[str]:
    """Apply the pre-import shims (idempotent); return the names applied so far."""
    require_detectron2()
    _shim_compiled_ops_placeholder()
    _shim_nms_rotated_placeholder()
    _shim_pillow_linear()
    _shim_numpy_aliases()
    _shim_numpy_in1d()
    _shim_numpy_percentile_interpolation()
    _shim_pkg_resources()
    _shim_caffe2_placeholder()
    _silence_known_warnings()
    return list(APPLIED)


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    return obj.__dict__


def _write_dict_to_json(dict_, path):
    with open(path, "w") as f:
        f.write(json.dumps(dict_, default=_json_default, sort_keys=True, indent=4, separators=(",", ": ")))


def _shim_cocoeval_fallback() -> None:
    # COCOEvaluator(use_fast_impl=True), the default, needs _C's COCOeval_opt;
    # fall back to pycocotools' COCOeval, which gives the same numbers.
    if has_compiled_ops():
        return
    from pycocotools.cocoeval import COCOeval

    import detectron2.evaluation.coco_evaluation as coco_evaluation

    if coco_evaluation.COCOeval_opt is not COCOeval:
        coco_evaluation.COCOeval_opt = COCOeval
        APPLIED.append("cocoeval_fallback")


def patch_cityscapes_evaluation() -> None:
    """cityscapesscripts 2.3 writes matches.json with a json default that fails on
    numpy scalars (numpy >= 2 returns np.int64 from count_nonzero)."""
    if importlib.util.find_spec("cityscapesscripts") is None:
        return
    import numpy as np
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as ev

    if getattr(ev.writeDict2JSON, "__module__", None) == __name__:
        return
    try:  # only needed when numpy scalars lack __dict__ (always on numpy >= 2)
        json.dumps(np.int64(1), default=lambda o: o.__dict__)
        return
    except (TypeError, AttributeError):
        pass
    ev.writeDict2JSON = _write_dict_to_json
    APPLIED.append("cityscapes_json")


def _sample_accepts_sets() -> bool:
    try:
        random.Random(0).sample({0}, k=1)
        return True
    except TypeError:  # Python >= 3.11: "Population must be a sequence"
        return False


class SetSamplingRandom(random.Random):
    """``random.Random`` whose ``sample`` accepts a set, as Python <= 3.10 did
    (it sampled from ``tuple(population)``, so the draws are the same)."""

    def sample(self, population, k, *, counts=None):
        if isinstance(population, (set, frozenset)):
            population = tuple(population)
        return super().sample(population, k, counts=counts)


def _shim_mapdataset_set_sampling() -> None:
    # data/common.py, MapDataset.__getitem__: when the mapper returns None it
    # retries with `self._rng.sample(self._fallback_candidates, k=1)`, a set;
    # Python 3.11 removed sampling from sets (TypeError mid-training).
    if _sample_accepts_sets():
        return
    from detectron2.data import common

    cls = common.MapDataset
    if getattr(cls.__init__, "__soco_d2_shim__", False):
        return
    probe = cls([None], lambda item: item)
    if not (
        isinstance(getattr(probe, "_fallback_candidates", None), (set, frozenset))
        and type(getattr(probe, "_rng", None)) is random.Random
    ):
        return  # a detectron2 that no longer samples from a set
    original_init = cls.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        rng = SetSamplingRandom()
        rng.setstate(self._rng.getstate())  # same seeded stream as detectron2's Random(42)
        self._rng = rng

    __init__.__soco_d2_shim__ = True
    cls.__init__ = __init__
    APPLIED.append("mapdataset_set_sampling")


def apply_after_import() -> None:
    """Shims that patch attributes of detectron2 modules (imported here if needed)."""
    _shim_cocoeval_fallback()
    _shim_mapdataset_set_sampling()


if __name__ == "__main__":
    # `python -m soco_d2.compat` first imports soco_d2, which applied the shims
    # through its own copy of this module: report that copy's list.
    import soco_d2.compat as applied

    print("compiled ops:", "yes" if applied.has_compiled_ops() else "no (placeholder)")
    print("shims applied:", ", ".join(applied.APPLIED) or "none")
