"""The checkpointer every soco_d2 run uses: detectron2's ``DetectionCheckpointer``
that reads weights safely and writes checkpoints atomically.

* Reading (``MODEL.WEIGHTS``, ``--resume``, ``--eval-only``): every file goes
  through :func:`soco_d2.checkpoint.read_weights` (restricted unpickler for
  ``.pkl``, ``torch.load(weights_only=True)`` otherwise) instead of detectron2's
  plain ``pickle.load``; ``unsafe_load=True`` (``--unsafe-load``) is the opt-out.
  What it does with the loaded object is detectron2 0.6's
  ``DetectionCheckpointer._load_file``: model-zoo ``.pkl`` as is, a Caffe2 /
  Detectron1 pickle as blobs with matching heuristics, pycls ``.pyth`` and
  native ``{"model": ...}`` files.
* Writing: each file is written to ``*.tmp`` and then ``os.replace``-d, so a run
  killed while saving leaves neither a truncated ``model_*.pth`` nor an empty
  ``last_checkpoint``: ``--resume`` always finds the last complete checkpoint.
  Non-local save dirs (``scheme://``) use detectron2's plain writes.
* ``last_incompatible``: the ``IncompatibleKeys`` of the last load (the
  missing-key report of :mod:`soco_d2.checkpoint.loading` reads it).
"""
from __future__ import annotations

import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .errors import WeightsFileError
from .safe_load import read_weights


def _as_checkpoint(filename: str, data) -> dict:
    """detectron2 0.6's interpretation of a loaded file (``DetectionCheckpointer._load_file``)."""
    if not isinstance(data, dict):
        raise WeightsFileError(f"{filename} holds a {type(data).__name__}, not a dict of weights")
    if filename.endswith(".pkl"):
        if "model" in data and "__author__" in data:  # detectron2 model-zoo format
            return data
        if "blobs" in data:  # Caffe2 / Detectron1 detection models
            data = data["blobs"]
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
    if filename.endswith(".pyth"):  # pycls
        if "model_state" not in data:
            raise WeightsFileError(f"cannot load {filename}: pycls checkpoints (.pyth) hold 'model_state'")
        state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
        return {"model": state, "__author__": "pycls", "matching_heuristics": True}
    return data if "model" in data else {"model": data}


class SafeCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with safe reads and atomic writes (see the module docstring)."""

    last_incompatible = None

    def __init__(self, model, save_dir: str = "", *, unsafe_load: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.unsafe_load = bool(unsafe_load)

    def _load_file(self, filename: str) -> dict:
        data = _as_checkpoint(filename, read_weights(filename, unsafe_load=self.unsafe_load))
        if filename.endswith(".pkl") and data.get("__author__") not in (None, "Caffe2"):
            self.logger.info("Reading a file from '%s'", data["__author__"])
        return data

    def _load_model(self, checkpoint):
        self.last_incompatible = super()._load_model(checkpoint)
        return self.last_incompatible

    def save(self, name: str, **kwargs) -> None:
        if "://" in self.save_dir or not self.save_dir or not self.save_to_disk:
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        with open(path + ".tmp", "wb") as f:
            torch.save(data, f)
        os.replace(path + ".tmp", path)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if "://" in self.save_dir:
            return super().tag_last_checkpoint(last_filename_basename)
        path = os.path.join(self.save_dir, "last_checkpoint")
        with open(path + ".tmp", "w") as f:
            f.write(last_filename_basename)
        os.replace(path + ".tmp", path)


def last_good_checkpoint(checkpointer) -> str:
    """The file ``last_checkpoint`` names (only complete checkpoints are named there), or ""."""
    return checkpointer.get_checkpoint_file() if checkpointer.has_checkpoint() else ""
