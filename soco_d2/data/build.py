"""The pretraining train loader: an infinite, deterministic stream of mapped samples.

Sample *positions* p = 0, 1, 2, ... are laid out in drop-last epochs of
``L = (N // B) * B`` positions (N images, global batch B): position p belongs
to epoch ``e = p // L`` and reads image ``permutation_e[p % L]``, where
``permutation_e`` is drawn from (seed, e).  Global batch ``b`` is positions
``[b*B, (b+1)*B)``; rank r of a world of W processes takes the positions
``p ≡ r (mod W)`` of it.  Before the mapper runs on position p, Python's
``random``, numpy's and torch's global RNGs are seeded from (seed, p), and
restored afterwards, so that

* a sample depends only on (seed, p): the same for any ``NUM_WORKERS`` and any
  split of the batch over processes;
* a run resumed at iteration k continues with position ``k * B``, exactly the
  samples the uninterrupted run would have seen.

With gradient accumulation (``SOLVER.ACCUMULATE_STEPS`` A) a batch is still the
B positions of one optimizer step; each rank cuts its share into A consecutive
slices, so slice j of global batch b is positions ``b*B + [j*B/A, (j+1)*B/A)``
over all ranks: the samples and their order are those of A = 1.

A sample whose image cannot be read (``soco_d2.imageio.ImageSkip``) uses the
next image of the dataset instead, under seeds from (seed, position, attempt),
so that rule keeps holding; the bad files are counted and limited by
``soco_d2.data.bad_images.BadImageLog``.

Batches are made by the mapper's ``collate`` (``soco_d2.data.collate``: stacked
tensors, pinned when ``pin_memory``), or are lists of mapper dicts
(detectron2's ``trivial_batch_collator``) for a mapper without one.
"""
from __future__ import annotations

import contextlib
import logging
import random
from collections import OrderedDict

import numpy as np
import torch
import torch.utils.data
from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm

from ..imageio import ImageSkip
from .bad_images import BadImageLog, TooManyBadImagesError, format_bad_images
from .datasets import get_pretrain_dicts

logger = logging.getLogger(__name__)

# A mapper may return None (an image it cannot use); the position then tries the
# next images of the dataset, with fresh seeds, up to this many times.
MAX_MAP_ATTEMPTS = 10


def derive_seed(*keys: int) -> int:
    """A 64-bit seed from integer keys (numpy's SeedSequence: well mixed, platform independent)."""
    words = np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFFFFFF for k in keys]).generate_state(2, dtype=np.uint32)
    return int(words[0]) | (int(words[1]) << 32)


def seed_global_rngs(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch's CPU generator
    (CUDA generators are left alone: mappers run on the CPU)."""
    random.seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])
    torch.default_generator.manual_seed(seed)


@contextlib.contextmanager
def preserved_global_rngs():
    """Restore the global RNG states on exit (mapping in the main process must not
    change the training loop's randomness)."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def resolve_seed(seed: int) -> int:
    """``cfg.SEED`` if >= 0, else one random seed shared by every rank (a collective call)."""
    if seed >= 0:
        return int(seed)
    return int(comm.shared_random_seed()) if comm.get_world_size() > 1 else int(np.random.randint(2**31))


class SampleStream:
    """Position -> dataset index, in shuffled drop-last epochs (see the module docstring)."""

    def __init__(self, num_samples: int, global_batch_size: int, seed: int):
        if global_batch_size <= 0:
            raise ValueError(f"global batch size must be positive, got {global_batch_size}")
        if num_samples < global_batch_size:
            raise ValueError(
                f"the pretraining dataset has {num_samples} images, fewer than one global batch "
                f"(SOLVER.IMS_PER_BATCH = {global_batch_size}); lower SOLVER.IMS_PER_BATCH"
            )
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.seed = int(seed)
        self.iters_per_epoch = num_samples // global_batch_size
        self.epoch_length = self.iters_per_epoch * global_batch_size
        self._permutations: OrderedDict[int, np.ndarray] = OrderedDict()

    def permutation(self, epoch: int) -> np.ndarray:
        perm = self._permutations.get(epoch)
        if perm is None:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch, 0xDA7A])))
            perm = self._permutations[epoch] = rng.permutation(self.num_samples)
            while len(self._permutations) > 2:  # positions are read in increasing order
                self._permutations.popitem(last=False)
        return perm

    def epoch(self, position: int) -> int:
        return position // self.epoch_length

    def index(self, position: int) -> int:
        return int(self.permutation(position // self.epoch_length)[position % self.epoch_length])

    def batch_positions(self, iteration: int, rank: int = 0, world_size: int = 1) -> list[int]:
        """Positions of rank ``rank``'s share of global batch ``iteration``."""
        if self.global_batch_size % world_size:
            raise ValueError(f"SOLVER.IMS_PER_BATCH ({self.global_batch_size}) is not divisible by the "
                             f"number of processes ({world_size})")
        start = iteration * self.global_batch_size
        return list(range(start + rank, start + self.global_batch_size, world_size))


class PositionMappedDataset(torch.utils.data.Dataset):
    """``dataset[p]``: the mapper's output for stream position p, under RNGs seeded from (seed, p).

    An image that cannot be read, or a mapper returning None, moves the position
    on to the next image of the dataset (attempt 1, 2, ...: seeds from (seed, p,
    attempt)).  With ``with_reports`` an item is ``(mapped, {file_name: reason})``
    of the unreadable images it met, for the loader's :class:`BadImageLog`.
    """

    def __init__(self, dataset_dicts, mapper, stream: SampleStream, max_bad_images: int = -1,
                 with_reports: bool = False):
        self._dicts = dataset_dicts if isinstance(dataset_dicts, DatasetFromList) else DatasetFromList(
            list(dataset_dicts), copy=True, serialize=True)
        self._mapper = mapper
        self.stream = stream
        self.max_bad_images = int(max_bad_images)
        self.with_reports = with_reports

    def __len__(self):  # positions are unbounded; len is the number of images
        return len(self._dicts)

    def __getitem__(self, position: int):
        mapped, bad = self.sample(position)
        return (mapped, bad) if self.with_reports else mapped

    def sample(self, position: int) -> tuple[dict, dict]:
        """(mapped sample, ``{file_name: reason}`` of the unreadable images skipped on the way)."""
        index = self.stream.index(position)
        bad, nones = {}, 0
        with preserved_global_rngs():
            for attempt in range(len(self._dicts)):
                seed_global_rngs(derive_seed(self.stream.seed, position, attempt))
                dataset_dict = self._dicts[(index + attempt) % len(self._dicts)]
                try:
                    mapped = self._mapper(dataset_dict)
                except ImageSkip as e:
                    bad[dataset_dict["file_name"]] = str(e)
                    if 0 <= self.max_bad_images < len(bad):
                        raise TooManyBadImagesError(format_bad_images(bad, self.max_bad_images)) from None
                    continue
                if mapped is not None:
                    return mapped, bad
                nones += 1
                logger.warning("mapper returned None for %s (position %d); trying the next image",
                               dataset_dict.get("file_name", dataset_dict.get("image_id")), position)
                if nones >= MAX_MAP_ATTEMPTS:
                    raise RuntimeError(f"the mapper returned None for {MAX_MAP_ATTEMPTS} images at position {position}")
        raise RuntimeError(f"no image of the dataset could be used at position {position}: "
                           f"{len(bad)} unreadable, {nones} refused by the mapper")


class _CollateWithReports:
    """Collates the mapped samples with ``collate``; passes the bad-image reports beside the batch."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items):
        bad = {}
        for _, reports in items:
            bad.update(reports)
        return self.collate([mapped for mapped, _ in items]), bad


class RankBatchSampler(torch.utils.data.Sampler):
    """Infinite batch sampler: rank r's positions of global batches start_iter, start_iter+1, ...,
    each cut into ``slices`` consecutive equal parts (gradient accumulation)."""

    def __init__(self, stream: SampleStream, start_iter: int, rank: int, world_size: int, slices: int = 1):
        self._stream, self._start, self._rank, self._world = stream, int(start_iter), rank, world_size
        self._slices = int(slices)
        share = len(stream.batch_positions(0, rank, world_size))  # validates divisibility now
        if share % self._slices:
            raise ValueError(f"SOLVER.IMS_PER_BATCH ({stream.global_batch_size}) must be divisible by the number of "
                             f"processes x SOLVER.ACCUMULATE_STEPS ({world_size} x {self._slices})")

    def __iter__(self):
        iteration = self._start
        while True:
            positions = self._stream.batch_positions(iteration, self._rank, self._world)
            size = len(positions) // self._slices
            for start in range(0, len(positions), size):
                yield positions[start:start + size]
            iteration += 1


class PretrainLoader:
    """Iterable of this rank's batches, starting at global batch ``start_iter``; with
    ``accumulate_steps`` A > 1 each item is the list of the batch's A slices.

    The torch ``DataLoader`` (and its workers) is created lazily, on the first
    ``next()``: a trainer can build the loader in its constructor and set
    ``start_iter`` (and ``seed``, stored in its checkpoint) once it knows where a
    resumed run continues, with no batch mapped twice.
    """

    def __init__(self, dataset_dicts, mapper, total_batch_size: int, *, seed: int, num_workers: int = 0,
                 start_iter: int = 0, rank: int | None = None, world_size: int | None = None,
                 max_bad_images: int = -1, pin_memory: bool = False, accumulate_steps: int = 1):
        self.rank = comm.get_rank() if rank is None else rank
        self.world_size = comm.get_world_size() if world_size is None else world_size
        if total_batch_size % self.world_size:
            raise ValueError(f"SOLVER.IMS_PER_BATCH ({total_batch_size}) must be divisible by the number "
                             f"of processes ({self.world_size})")
        self.accumulate_steps = int(accumulate_steps)
        if self.accumulate_steps < 1 or total_batch_size % (self.world_size * self.accumulate_steps):
            raise ValueError(f"SOLVER.IMS_PER_BATCH ({total_batch_size}) must be divisible by the number of "
                             f"processes x SOLVER.ACCUMULATE_STEPS ({self.world_size} x {accumulate_steps})")
        self.total_batch_size = total_batch_size
        self.batch_size = total_batch_size // self.world_size  # per optimizer step
        self.slice_size = self.batch_size // self.accumulate_steps  # per forward
        self.num_workers = num_workers
        self.pin_memory = bool(pin_memory)
        self.start_iter = start_iter
        self._dicts = DatasetFromList(list(dataset_dicts), copy=True, serialize=True)
        self._mapper = mapper
        self.stream = SampleStream(len(self._dicts), total_batch_size, seed)
        # unreadable images met so far (saved in checkpoints by the trainer)
        self.bad_images = BadImageLog(max_bad_images, self.world_size)

    @property
    def seed(self) -> int:
        return self.stream.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self.stream = SampleStream(self.stream.num_samples, self.total_batch_size, value)

    @property
    def iters_per_epoch(self) -> int:
        return self.stream.iters_per_epoch

    def dataset(self, with_reports: bool = False) -> PositionMappedDataset:
        return PositionMappedDataset(self._dicts, self._mapper, self.stream, self.bad_images.limit, with_reports)

    def build_torch_loader(self, start_iter: int) -> torch.utils.data.DataLoader:
        """Batches as ``(list of mapped dicts, {file_name: reason} of unreadable images met)``."""
        return torch.utils.data.DataLoader(
            self.dataset(with_reports=True),
            batch_sampler=RankBatchSampler(self.stream, start_iter, self.rank, self.world_size, self.accumulate_steps),
            num_workers=self.num_workers,
            collate_fn=_CollateWithReports(getattr(self._mapper, "collate", trivial_batch_collator)),
            pin_memory=self.pin_memory,
            # workers' base seed; samples are reseeded per position anyway.  Passing a
            # generator keeps the DataLoader from drawing on the global torch RNG.
            generator=torch.Generator().manual_seed(self.seed & 0x7FFFFFFFFFFFFFFF),
        )

    def __iter__(self):
        start = self.start_iter
        logger.info("pretraining loader: rank %d/%d, %d images per batch%s, from global batch %d "
                    "(position %d, epoch %d), seed %d, %d workers", self.rank, self.world_size, self.batch_size,
                    f" in {self.accumulate_steps} slices" if self.accumulate_steps > 1 else "", start,
                    start * self.total_batch_size, self.stream.epoch(start * self.total_batch_size), self.seed,
                    self.num_workers)
        slices, bad_images = [], {}
        for batch, bad in self.build_torch_loader(start):
            slices.append(batch)
            bad_images.update(bad)
            if len(slices) < self.accumulate_steps:
                continue
            self.bad_images.update(bad_images)  # every iteration: a collective when there are several processes
            yield slices if self.accumulate_steps > 1 else slices[0]
            slices, bad_images = [], {}


def load_pretrain_dicts(names) -> list[dict]:
    """The concatenated dataset dicts of every ``DATASETS.TRAIN`` name."""
    if isinstance(names, str):
        names = (names,)
    if not names:
        raise ValueError("DATASETS.TRAIN is empty: name at least one pretraining dataset")
    dicts = []
    for name in names:
        dicts.extend(get_pretrain_dicts(name))
    return dicts


def build_pretrain_train_loader(cfg, mapper=None, start_iter: int = 0, dataset_dicts=None) -> PretrainLoader:
    """The loader of ``DATASETS.TRAIN`` through ``mapper`` (default: ``build_ssl_mapper(cfg)``).

    Seed: ``cfg.SEED``, or one drawn and shared by every rank when it is < 0
    (the trainer stores it in its checkpoint so a resume sees the same stream).
    """
    if mapper is None:
        from . import build_ssl_mapper  # the mapper registry lives in soco_d2.data

        mapper = build_ssl_mapper(cfg)
    if dataset_dicts is None:
        dataset_dicts = load_pretrain_dicts(cfg.DATASETS.TRAIN)
    loader = PretrainLoader(
        dataset_dicts,
        mapper,
        cfg.SOLVER.IMS_PER_BATCH,
        seed=resolve_seed(cfg.SEED),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        start_iter=start_iter,
        max_bad_images=cfg.DATALOADER.MAX_BAD_IMAGES,
        pin_memory=str(cfg.MODEL.DEVICE).startswith("cuda"),  # the model copies batches with non_blocking
        accumulate_steps=cfg.SOLVER.ACCUMULATE_STEPS,
    )
    logger.info("pretraining data: %s, %d images, %d iterations per epoch at %d images per batch",
                ", ".join(cfg.DATASETS.TRAIN), loader.stream.num_samples, loader.iters_per_epoch,
                cfg.SOLVER.IMS_PER_BATCH)
    return loader
