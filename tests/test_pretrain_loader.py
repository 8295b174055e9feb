"""The pretraining loader: a deterministic sample stream that is the same for any
NUM_WORKERS, any split over processes, and after a resume."""
import itertools
import random

import numpy as np
import pytest
import soco_d2  # noqa: F401
import torch

from engine_utils import one_torch_thread, tiny_cfg  # noqa: F401  (autouse fixture)
from soco_d2.data import build_ssl_mapper
from soco_d2.data.build import PretrainLoader, SampleStream, build_pretrain_train_loader, load_pretrain_dicts


def test_sample_stream_epochs_are_drop_last_permutations():
    stream = SampleStream(num_samples=10, global_batch_size=4, seed=3)
    assert (stream.iters_per_epoch, stream.epoch_length) == (2, 8)
    epochs = [[stream.index(p) for p in range(e * 8, e * 8 + 8)] for e in range(4)]
    for indices in epochs:
        assert len(set(indices)) == 8 and set(indices) <= set(range(10))  # no repeats inside an epoch
    assert len({tuple(e) for e in epochs}) == 4  # reshuffled every epoch
    again = SampleStream(10, 4, seed=3)
    assert [again.index(p) for p in range(32)] == list(itertools.chain(*epochs))  # a function of (seed, p)
    assert [SampleStream(10, 4, seed=4).index(p) for p in range(8)] != epochs[0]
    # ranks take p = r (mod W) of each global batch; together they cover it exactly
    shares = [stream.batch_positions(5, r, 2) for r in range(2)]
    assert shares == [[20, 22], [21, 23]]
    with pytest.raises(ValueError, match="divisible"):
        stream.batch_positions(0, 0, 3)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        SampleStream(3, 4, 0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    cfg = tiny_cfg(str(tmp_path_factory.mktemp("loader")), INPUT__SSL__VIEW_SIZES="[32, 32]")
    return cfg, load_pretrain_dicts(cfg.DATASETS.TRAIN), build_ssl_mapper(cfg)


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def _same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a["image_ids"] == b["image_ids"]
        for va, vb in zip(a["views"], b["views"]):
            assert torch.equal(va, vb)


def test_same_samples_for_any_num_workers_and_after_resume(demo):
    cfg, dicts, mapper = demo
    ref = _take(PretrainLoader(dicts, mapper, 4, seed=11, num_workers=0), 5)  # 5 batches: crosses 2 epochs
    assert ref[0]["views"][0].shape == (4, 3, 32, 32)  # the mapper's collate: stacked views
    _same(ref, _take(PretrainLoader(dicts, mapper, 4, seed=11, num_workers=2), 5))
    resumed = PretrainLoader(dicts, mapper, 4, seed=11, num_workers=2)
    resumed.start_iter = 3  # set after construction, as the trainer does after resume_or_load
    _same(ref[3:], _take(resumed, 2))
    # the stream follows SampleStream; another seed gives other samples
    stream = SampleStream(len(dicts), 4, 11)
    assert ref[2]["image_ids"] == [dicts[stream.index(p)]["image_id"] for p in range(8, 12)]
    other = _take(PretrainLoader(dicts, mapper, 4, seed=12), 1)[0]
    assert not torch.equal(ref[0]["views"][0], other["views"][0])


def test_ranks_split_the_global_batch_with_identical_samples(demo):
    _, dicts, mapper = demo
    (whole,) = _take(PretrainLoader(dicts, mapper, 4, seed=5, start_iter=2, rank=0, world_size=1), 1)
    halves = [_take(PretrainLoader(dicts, mapper, 4, seed=5, start_iter=2, rank=r, world_size=2), 1)[0]
              for r in range(2)]
    assert [len(h["image_ids"]) for h in halves] == [2, 2]
    for rank, half in enumerate(halves):  # rank r takes positions r, r + 2 of the global batch
        assert half["image_ids"] == whole["image_ids"][rank::2]
        assert all(torch.equal(h, w[rank::2]) for h, w in zip(half["views"], whole["views"]))


def test_mapping_leaves_the_global_rngs_alone_and_starts_lazily(demo):
    _, dicts, mapper = demo
    calls = []

    def counting_mapper(d):
        calls.append(d["image_id"])
        return mapper(d)

    loader = PretrainLoader(dicts, counting_mapper, 4, seed=5)
    it = iter(loader)
    assert calls == []  # nothing mapped before the first batch is asked for
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    state = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    next(it)
    assert len(calls) == 4
    assert random.getstate() == state[0]
    assert np.array_equal(np.random.get_state()[1], state[1])
    assert torch.equal(torch.get_rng_state(), state[2])


def test_build_from_config_with_a_random_seed(demo, tmp_path):
    cfg, _, mapper = demo
    cfg = tiny_cfg(str(tmp_path), SEED=-1, SOLVER__IMS_PER_BATCH=2)
    loader = build_pretrain_train_loader(cfg, mapper=mapper, start_iter=4)
    assert loader.seed >= 0 and loader.start_iter == 4 and loader.batch_size == 2 and loader.iters_per_epoch == 4
    fixed = build_pretrain_train_loader(tiny_cfg(str(tmp_path), SEED=3), mapper=mapper)
    assert fixed.seed == 3
