"""What every pretraining meta-architecture shares: the batch on the device, the
views' photometric ops and normalisation, the momentum target, metrics that do
not stall the device, and the training/eval contract."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.utils.events import get_event_storage

from soco_d2.data.collate import batch_to_device, collate_views
from soco_d2.data.decode import render_encoded
from soco_d2.data.photometric import apply_photometry

from ..momentum import build_target, ema_update_


class SSLMetaArch(nn.Module):
    """Base of the soco_d2 meta-architectures.

    Subclasses build their online modules, call ``self.make_target(names)`` to
    create the momentum copies (``self.target.<name>``), and implement
    ``losses(batch)`` on a batch from :meth:`prepare`.  ``forward`` takes a
    collated batch (``soco_d2.data.collate``, what the pretraining loader
    yields) or a list of mapper outputs (collated here).  In training mode it
    returns the loss dict detectron2's trainers expect; in eval mode the online
    backbone's features of ``views[0]`` (e.g. for feature inspection).

    Nothing in a training forward reads a value back from the device except
    :meth:`put_metrics`, once per ``metrics_period`` iterations.
    """

    def __init__(self, *, pixel_mean, pixel_std, metrics_period: int = 1, max_iter: int = 0):
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.target: nn.ModuleDict | None = None
        self.metrics_period = int(metrics_period)
        self.max_iter = int(max_iter)
        self._metric_sums: dict[str, tuple[object, int]] = {}
        # set by a step trainer that accumulates gradients: every forward but a step's last
        # only adds to the metric sums, so the step's metrics are the mean over its slices
        self.hold_metrics = False

    @classmethod
    def accumulation_refusal(cls, cfg) -> str | None:
        """Why ``SOLVER.ACCUMULATE_STEPS > 1`` would not give the optimizer step of the whole
        batch with this method and ``cfg`` (None: it does).  Accumulation is exact when the
        loss of a batch is the mean of per-image terms (then the mean of equal slices' losses
        is the batch's loss) and a forward changes no state the next one reads; methods that
        meet this say so by overriding this."""
        return (f"{cls.__name__} does not declare that its loss is a mean of per-image terms "
                "(override accumulation_refusal)")

    @staticmethod
    def metrics_kwargs(cfg) -> dict:
        """``metrics_period`` / ``max_iter`` from the config: metrics are read when the
        trainer writes them (``SOLVER.LOG_PERIOD``, and the last iteration)."""
        return {"metrics_period": cfg.SOLVER.LOG_PERIOD, "max_iter": cfg.SOLVER.MAX_ITER}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def make_target(self, names: list[str]) -> None:
        """Momentum copies of the online modules ``names`` (``target.<name>.*`` in checkpoints)."""
        self.target = build_target({name: getattr(self, name) for name in names})

    @torch.no_grad()
    def momentum_update(self, tau: float) -> None:
        """EMA of every target module toward its online module (no-op without a target)."""
        if self.target is None:
            return
        for name, target in self.target.items():
            ema_update_(target, getattr(self, name), tau)

    # ------------------------------------------------------------------ inputs
    def collate(self, samples: list[dict]) -> dict:
        """Mapper outputs -> a batch (the method's collate; ``soco_d2.data.collate``)."""
        return collate_views(samples)

    def prepare(self, batched_inputs) -> dict:
        """A collated batch, or a list of mapper outputs, on the model's device
        (``non_blocking``: the loader pins its batches on CUDA); images sent undecoded
        (``INPUT.SSL.DECODE_ON "device"``) are decoded and cut into views here."""
        batch = self.collate(list(batched_inputs)) if isinstance(batched_inputs, (list, tuple)) else batched_inputs
        batch = batch_to_device(batch, self.device)
        if "encoded" in batch:  # INPUT.SSL.DECODE_ON device
            batch = {**batch, "views": render_encoded(batch["encoded"], self.device)}
        return batch

    def view_images(self, batch: dict, index: int, size_divisibility: int = 0) -> torch.Tensor:
        """View ``index`` of every image as one normalised (N, 3, H, W) float32 tensor:
        the photometric ops (uint8 views with their parameters) or just the
        normalisation (float views, coloured in the mapper), in float32 whatever the
        autocast state.

        Padding (zeros after normalisation, at the bottom/right, so box
        coordinates are unchanged) is only added when the backbone needs a size
        divisible by ``size_divisibility`` (FPN: 32).
        """
        views = batch["views"][index]
        photometric = batch["photometric"][index] if batch.get("photometric") is not None else None
        with torch.autocast(self.device.type, enabled=False):
            images = apply_photometry(views, photometric, self.pixel_mean, self.pixel_std)
        if size_divisibility > 1:
            height, width = images.shape[-2:]
            pad_h, pad_w = -height % size_divisibility, -width % size_divisibility
            if pad_h or pad_w:
                images = F.pad(images, (0, pad_w, 0, pad_h))
        return images

    # ------------------------------------------------------------------ metrics
    def put_metrics(self, **values) -> None:
        """Scalars for the event storage (tensors or floats).  Tensors are summed on the
        device and read back in one transfer when the trainer writes metrics (every
        ``metrics_period`` iterations and the last one), so other iterations never
        wait for the device; the value put is the mean since the last write."""
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().float().reshape(())
            total, count = self._metric_sums.get(name, (0.0, 0))
            self._metric_sums[name] = (value + total, count + 1)
        if self.hold_metrics:
            return
        storage = get_event_storage()
        last = self.max_iter > 0 and storage.iter >= self.max_iter - 1
        if self.metrics_period > 1 and (storage.iter + 1) % self.metrics_period and not last:
            return
        names = list(self._metric_sums)
        sums = [self._metric_sums[n][0] for n in names]
        tensors = [s for s in sums if isinstance(s, torch.Tensor)]
        read = iter(torch.stack(tensors).tolist() if tensors else [])
        for name, total in zip(names, sums):
            value = next(read) if isinstance(total, torch.Tensor) else total
            storage.put_scalar(name, value / self._metric_sums[name][1], smoothing_hint=False)
        self._metric_sums = {}

    # ------------------------------------------------------------------ contract
    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batched_inputs):
        batch = self.prepare(batched_inputs)
        if self.training:
            return self.losses(batch)
        backbone = getattr(self, "backbone")
        return backbone(self.view_images(batch, 0, getattr(backbone, "size_divisibility", 0)))
