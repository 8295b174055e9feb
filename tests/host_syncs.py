"""Count the tensor calls that make the host wait for the device (on CUDA) in a block of code.

    with HostSyncCounter() as syncs:
        model(batch)
    syncs.calls  # ["item", "nonzero", ...]

Counted: reading values back (``item``, ``tolist``, ``numpy``, ``cpu``, ``bool`` /
``int`` / ``float`` / ``index`` of a tensor, ``equal``, ``allclose``), ops whose
output size depends on the values (``nonzero``, ``argwhere``, ``unique``,
``masked_select``, ``bincount``, one-argument ``where``, ``repeat_interleave``
with tensor repeats and no ``output_size``, indexing with a bool mask), and
copies to the CPU.  Seen through a ``TorchFunctionMode``, so only calls made
from Python (inside the model's modules and functions) are counted, whatever
device the tensors are on: a CPU run counts what a CUDA run would wait for.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "equal", "allclose"}
VALUE_SIZED = {"nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "bincount"}
INDEXING = {"__getitem__", "__setitem__", "index_put", "index_put_"}


def _bool_index(index) -> bool:
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _to_cpu(args, kwargs) -> bool:
    target = kwargs.get("device", args[1] if len(args) > 1 else None)
    source = args[0] if args and isinstance(args[0], torch.Tensor) else None
    return source is not None and source.device.type != "cpu" and target is not None and str(target).startswith("cpu")


class HostSyncCounter(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in READS or name in VALUE_SIZED:
            self.calls.append(name)
        elif name == "where" and len(args) + len(kwargs) == 1:
            self.calls.append("where(condition)")
        elif name == "repeat_interleave" and kwargs.get("output_size") is None and any(
            isinstance(a, torch.Tensor) for a in list(args[1:]) + [kwargs.get("repeats")]
        ):
            self.calls.append("repeat_interleave")
        elif name in INDEXING and len(args) > 1 and _bool_index(args[1]):
            self.calls.append(f"{name}[bool]")
        elif name == "to" and _to_cpu(args, kwargs):
            self.calls.append("to(cpu)")
        return func(*args, **kwargs)
