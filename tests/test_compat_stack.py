"""The shims for Python >= 3.11, numpy 2.4 and torch without caffe2 reproduce
their failure without the shim and fix it with it, on real detectron2 code paths."""
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from soco_d2 import compat

COMPAT_FILE = compat.__file__
NEEDS_PY311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="sets are sampled up to Python 3.10")


def _run(code: str) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter after loading compat.py alone (not soco_d2)
    and applying only its pre-import shims, so detectron2.data imports."""
    prelude = textwrap.dedent(
        f"""
        import importlib.util, random, sys, types
        spec = importlib.util.spec_from_file_location("compat_under_test", {COMPAT_FILE!r})
        compat = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(compat)
        compat.apply()
        """
    )
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


MAP_DATASET_WITH_NONES = """
from detectron2.data.common import MapDataset
def items():
    dataset = MapDataset(list(range(10)), lambda x: None if x % 3 == 0 else x)
    return ",".join(str(dataset[i]) for i in range(10))
try:
    print("BARE=" + items())
except TypeError as err:
    print("BARE_ERROR=" + str(err))
compat.apply_after_import()
print("APPLIED=" + ",".join(compat.APPLIED))
print("SHIMMED=" + items())
"""


@NEEDS_PY311
def test_mapdataset_retry_fails_without_the_shim_and_works_with_it():
    res = _run(MAP_DATASET_WITH_NONES)
    assert res.returncode == 0, res.stderr
    out = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    assert out["BARE_ERROR"].startswith("Population must be a sequence")
    assert "mapdataset_set_sampling" in out["APPLIED"]
    items = [int(x) for x in out["SHIMMED"].split(",")]
    assert len(items) == 10 and all(x % 3 != 0 for x in items)


def test_mapdataset_shim_not_applied_where_not_needed():
    # Python <= 3.10 behaviour (sample() takes sets), or a detectron2 that keeps a list.
    python310 = "random.Random.sample = lambda self, pop, k, **kw: random.sample(tuple(pop), k)\n"
    list_based = textwrap.dedent(
        """
        from detectron2.data import common
        init = common.MapDataset.__init__
        def list_init(self, *a, **k):
            init(self, *a, **k)
            self._fallback_candidates = list(self._fallback_candidates)
        common.MapDataset.__init__ = list_init
        """
    )
    for setup in (python310, list_based):
        res = _run(setup + "compat.apply_after_import()\nprint('APPLIED=' + ','.join(compat.APPLIED))\n")
        assert res.returncode == 0, res.stderr
        assert "mapdataset_set_sampling" not in res.stdout.split("APPLIED=")[1]


@NEEDS_PY311
def test_mapper_returning_none_under_build_detection_train_loader():
    """Stock detectron2 training loader, a mapper that rejects a third of the
    images (as user mappers do for images without usable annotations)."""
    from detectron2.data import build_detection_train_loader
    from detectron2.data.common import MapDataset
    from detectron2.data.samplers import TrainingSampler

    dicts = [{"file_name": f"img{i}.jpg", "image_id": i, "height": 8, "width": 8} for i in range(12)]
    rejected = {0, 3, 6, 9}
    calls = []

    def mapper(d):
        calls.append(d["image_id"])
        if d["image_id"] in rejected:
            return None
        return {"image_id": d["image_id"], "image": torch.full((3, 8, 8), d["image_id"], dtype=torch.uint8)}

    loader = build_detection_train_loader(
        dataset=dicts,
        mapper=mapper,
        sampler=TrainingSampler(len(dicts), seed=0),
        total_batch_size=4,
        aspect_ratio_grouping=False,
        num_workers=0,
    )
    assert isinstance(loader.dataset.dataset, MapDataset)
    out = []
    for _, batch in zip(range(8), loader):
        out.extend(batch)
    assert len(out) == 32
    ids = [x["image_id"] for x in out]
    assert set(ids) <= set(range(12)) - rejected
    assert all(int(x["image"][0, 0, 0]) == x["image_id"] for x in out)  # each item is its dataset entry
    retried = [i for i in calls if i in rejected]
    assert retried, "the sampler never drew a rejected image: the retry path was not exercised"
    assert len(calls) == len(out) + len(retried)  # one replacement drawn per rejection
    # The dataset still pickles (DataLoader workers under spawn) and keeps retrying after it.
    clone = pickle.loads(pickle.dumps(loader.dataset.dataset))
    assert clone[0]["image_id"] not in rejected


def test_percentile_interpolation_fails_without_the_shim_in_detectron2_benchmark():
    """detectron2's DataLoaderBenchmark logs percentiles with interpolation=."""
    import numpy as np

    if "numpy_percentile_interpolation" not in compat.APPLIED:
        pytest.skip(f"numpy {np.__version__} still accepts interpolation=")
    res = _run(
        """
        import logging
        import numpy as np
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        from detectron2.data.benchmark import DataLoaderBenchmark
        np.percentile = np.percentile.__wrapped__  # as without the shim
        try:
            DataLoaderBenchmark._log_time(None, "bare", 0.25, [0.1, 0.2, 0.3, 0.4, 0.5])
        except TypeError as err:
            print("BARE_ERROR=" + str(err))
        compat._shim_numpy_percentile_interpolation()
        DataLoaderBenchmark._log_time(None, "shimmed", 0.25, [0.1, 0.2, 0.3, 0.4, 0.5])
        """
    )
    assert res.returncode == 0, res.stderr
    assert "unexpected keyword argument 'interpolation'" in res.stdout
    assert "shimmed: avg=4.0 it/s" in res.stderr


def test_percentile_shim_maps_interpolation_to_method():
    import numpy as np

    values = [1.0, 2.0, 3.0, 4.0]
    for name in ("percentile", "nanpercentile"):
        assert getattr(np, name)(values, 40, interpolation="nearest") == getattr(np, name)(values, 40, method="nearest")
    for name in ("quantile", "nanquantile"):
        assert getattr(np, name)(values, 0.4, interpolation="lower") == getattr(np, name)(values, 0.4, method="lower")
    assert np.percentile(values, 40) == pytest.approx(2.2)
    with pytest.raises(TypeError, match="not both"):
        np.percentile(values, 40, interpolation="lower", method="higher")


def test_detectron2_export_and_analysis_import_without_caffe2():
    res = _run(
        """
        finder = [f for f in sys.meta_path if isinstance(f, compat._Caffe2PlaceholderFinder)]
        if not finder:
            print("CAFFE2_INSTALLED")
            raise SystemExit(0)
        sys.meta_path.remove(finder[0])
        try:
            import detectron2.utils.analysis
        except ModuleNotFoundError as err:
            print("BARE_ERROR=" + str(err))
        for name in [m for m in sys.modules if m.startswith("detectron2.export") or m == "detectron2.utils.analysis"]:
            del sys.modules[name]
        sys.meta_path.append(finder[0])
        import detectron2.utils.analysis
        print("IMPORTED")
        """
    )
    assert res.returncode == 0, res.stderr
    if "CAFFE2_INSTALLED" in res.stdout:
        pytest.skip("caffe2 is installed")
    assert "BARE_ERROR=No module named 'caffe2'" in res.stdout
    assert "IMPORTED" in res.stdout


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning", "ignore:torch.meshgrid")
def test_flop_count_and_torchscript_tracing_work_and_caffe2_export_says_why_not():
    from detectron2.config import get_cfg
    from detectron2.export import TracingAdapter
    from detectron2.modeling import build_model
    from detectron2.utils.analysis import flop_count_operators

    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = [{"image": torch.rand(3, 64, 96) * 255}]
    flops = flop_count_operators(model, inputs)
    assert flops["conv"] > 0.1  # GFLOPs of the R18 stem..res4 on 64x96
    adapter = TracingAdapter(model, inputs)
    traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    with torch.no_grad():
        eager = adapter(*adapter.flattened_inputs)
        replay = traced(*adapter.flattened_inputs)
    assert len(eager) == len(replay) and all(torch.equal(a, b) for a, b in zip(eager, replay))
    if "caffe2_placeholder" in compat.APPLIED:
        from caffe2.proto import caffe2_pb2

        with pytest.raises(compat.MissingCaffe2Error, match="PyTorch removed its caffe2"):
            caffe2_pb2.NetDef()
