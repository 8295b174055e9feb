"""Read weights files from untrusted sources without running their code.

:func:`read_weights` is the one way weights enter soco_d2: pretraining and
transfer ``MODEL.WEIGHTS``, ``--resume``, conversion and the probes all go
through it (the checkpointer of :mod:`soco_d2.checkpoint.checkpointer` calls it).

* ``.pth`` / ``.pt`` / ``.tar`` / ``.pyth``: ``torch.load(weights_only=True)``;
  ``argparse.Namespace`` (the ``opt`` entry of official SoCo / PixPro
  checkpoints) is the only class allowed on top of torch's own list.
* ``.pkl``: a restricted unpickler that rebuilds dicts, lists, tuples and
  numpy arrays only (detectron2 model-zoo files, Caffe2 blobs).
* ``.npy`` holding an object (DetCon's released Haiku parameter trees are
  ``np.save`` of a dict): numpy would need ``allow_pickle=True``, i.e. run
  arbitrary pickle code.  The same restricted unpickler reads it instead.
  Plain ``.npy`` arrays and ``.npz`` archives are read with
  ``allow_pickle=False``.

``unsafe_load=True`` (every tool's ``--unsafe-load``) falls back to plain
``torch.load(weights_only=False)`` / ``pickle.load`` for files you trust.
Every refusal says which class the file wanted and names that flag; a file
that is merely corrupt says so and does not suggest it.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from collections import OrderedDict

import numpy as np

from .errors import UNSAFE_LOAD_FLAG, WeightsFileError

TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".pyth", ".ckpt", ".bin")
PICKLE_SUFFIXES = (".pkl", ".pickle")
NUMPY_SUFFIXES = (".npy", ".npz")


class _FrozenDictStandIn(dict):
    """What ``haiku.data_structures.frozendict`` unpickles to here: a plain dict."""

    def __init__(self, storage=None):
        super().__init__(storage or {})


def _array_from_buffer(buffer, dtype, shape, order):
    # numpy's pickle protocol-5 path (numpy.core.numeric._frombuffer)
    array = np.frombuffer(buffer, dtype=dtype)
    if order == "F":
        return array.reshape(shape[::-1]).T
    return array.reshape(shape)


# (module, name) -> object the unpickler may hand out (None: a numpy internal,
# looked up in numpy.core or numpy._core, whichever this numpy has).  Nothing
# here can run code.
_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = None
    _ALLOWED[(_mod, "scalar")] = None
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = _array_from_buffer
for _mod in ("haiku._src.data_structures", "haiku.data_structures"):
    _ALLOWED[(_mod, "frozendict")] = _FrozenDictStandIn


def _numpy_internal(module: str, name: str):
    import importlib

    for candidate in (module.replace("numpy.core", "numpy._core"), module.replace("numpy._core", "numpy.core")):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"this numpy has no {module}.{name}")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds containers and numpy arrays."""

    def find_class(self, module, name):
        key = (module, name)
        if key == ("copyreg", "_reconstructor"):  # numpy scalars in protocol-2 pickles
            import copyreg

            return copyreg._reconstructor
        if key in _ALLOWED:
            obj = _ALLOWED[key]
            return _numpy_internal(module, name) if obj is None else obj
        if module == "numpy" and isinstance(np.sctypeDict.get(name), type):  # np.float32, ...
            return np.sctypeDict[name]
        if module == "numpy.dtypes" and name.endswith("DType"):
            import numpy.dtypes

            return getattr(numpy.dtypes, name)
        if "FlatMap" in name and module.startswith("haiku"):
            raise pickle.UnpicklingError(
                "the file holds a haiku FlatMapping, which pickles a jax PyTreeDef and cannot be read "
                "without jax/haiku. In an environment with haiku, save it as plain dicts of numpy "
                "arrays first: np.save(path, jax.device_get(hk.data_structures.to_mutable_dict(params)))"
            )
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from an untrusted pickle (only dicts, lists and numpy "
            f"arrays are allowed); pass {UNSAFE_LOAD_FLAG} if you trust the file"
        )


def _describe_failure(path: str, err: Exception) -> str:
    text = str(err)
    size = os.path.getsize(path)
    if isinstance(err, (EOFError, zipfile.BadZipFile)) or any(
        s in text for s in ("central directory", "truncated", "Ran out of input", "unexpected EOF", "failed reading zip")
    ):
        return f"cannot read {path} ({size} bytes): the file is truncated or corrupt ({type(err).__name__}: {text})"
    return (f"cannot read {path} ({size} bytes): not a weights file this loader knows ({', '.join(TORCH_SUFFIXES)}: "
            f"torch.save; .pkl: pickle; .npy/.npz: numpy), or a corrupt one ({type(err).__name__}: {text})")


def _refused_global(text: str) -> str | None:
    """The ``module.name`` torch's weights-only unpickler refused, if that is why it failed."""
    match = re.search(r"unsupported GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    return match.group(1) if match else None


def _load_torch(path: str, unsafe: bool):
    import torch

    if unsafe:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_global(str(err))
        if refused is None:  # not a class it refused: the bytes are not a torch checkpoint
            reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(err))
            raise WeightsFileError(
                f"cannot read {path} ({os.path.getsize(path)} bytes): it is not a file written by torch.save, "
                "or it is corrupt" + (f" ({reason.group(1).strip()})" if reason else "")
            ) from None
        raise WeightsFileError(
            f"refusing to load {path}: it holds {refused}, which torch.load(weights_only=True) does not "
            f"rebuild (a weights file needs only tensors and plain containers); pass {UNSAFE_LOAD_FLAG} "
            "if you trust the file"
        ) from None


def _npy_dtype(f) -> np.dtype:
    """The dtype in an ``.npy`` header; leaves ``f`` at the start of the data."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)[2]
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)[2]
    return np.lib.format._read_array_header(f, version)[2]  # (3, 0): utf-8 header


def _load_npy(path: str, unsafe: bool):
    with open(path, "rb") as f:
        if not _npy_dtype(f).hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        # an object array: its data is a pickle, which numpy would only read with allow_pickle=True
        obj = pickle.load(f) if unsafe else RestrictedUnpickler(f).load()
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()  # np.save of a dict gives a 0-d object array
    return obj


def is_object_npy(path: str) -> bool:
    """True when ``path`` is an ``.npy`` whose payload is a pickle (needs allow_pickle)."""
    if not path.lower().endswith(".npy"):
        return False
    try:
        with open(path, "rb") as f:
            return bool(_npy_dtype(f).hasobject)
    except Exception:  # noqa: BLE001  (a corrupt header: read_weights says what is wrong)
        return False


def read_weights(path: str, *, unsafe_load: bool = False):
    """The Python object stored in the weights file ``path``, read without running its code.

    ``.pkl``: restricted unpickler (dicts, lists, numpy arrays); ``.npy``/``.npz``:
    numpy without ``allow_pickle`` (object ``.npy``: restricted unpickler); any
    other suffix: ``torch.load(weights_only=True)``.  ``unsafe_load=True`` uses plain
    ``pickle`` / ``torch.load(weights_only=False)``: only for files you trust.
    Raises :class:`WeightsFileError` with a message that says why.
    """
    if not os.path.isfile(path):
        raise WeightsFileError(f"weights file {path!r} does not exist" if not os.path.isdir(path)
                               else f"weights file {path!r} is a folder, not a file")
    if os.path.getsize(path) == 0:
        raise WeightsFileError(f"cannot read {path}: the file is empty")
    lower = path.lower()
    try:
        if lower.endswith(NUMPY_SUFFIXES):
            if lower.endswith(".npz"):
                with np.load(path, allow_pickle=False) as archive:
                    return {k: archive[k] for k in archive.files}
            return _load_npy(path, unsafe_load)
        if lower.endswith(PICKLE_SUFFIXES):
            with open(path, "rb") as f:
                if unsafe_load:
                    return pickle.load(f, encoding="latin1")
                return RestrictedUnpickler(f, encoding="latin1").load()
        # everything else: a torch file (zip or legacy format)
        return _load_torch(path, unsafe_load)
    except WeightsFileError:
        raise
    except pickle.UnpicklingError as err:
        if "refusing" in str(err) or "FlatMapping" in str(err):
            raise WeightsFileError(f"{path}: {err}") from None
        raise WeightsFileError(_describe_failure(path, err)) from None
    except Exception as err:  # noqa: BLE001  (any decoding failure of a corrupt file: KeyError, IndexError, ...)
        raise WeightsFileError(_describe_failure(path, err)) from None
