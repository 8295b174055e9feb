"""Each compat shim is needed on this stack and does nothing when its target exists."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from soco_d2 import compat

COMPAT_FILE = compat.__file__

# Code that makes one shim's target present, as a newer detectron2 / older stack would.
PRESENT = {
    "compiled_ops": textwrap.dedent(
        """
        fake = types.ModuleType("detectron2._C")
        fake.get_compiler_version = lambda: "GCC 12"
        fake.get_cuda_version = lambda: "13.0"
        sys.modules["detectron2._C"] = fake
        """
    ),
    "pillow": "from PIL import Image; Image.LINEAR = Image.BILINEAR",
    "numpy_aliases": "import numpy as np; [setattr(np, n, t) for n, t in dict(int=int, float=float, str=str, object=object, bool=bool).items()]",
    "numpy_in1d": "import numpy as np; np.in1d = lambda *a, **k: 'original'",
    "pkg_resources": "sys.modules['pkg_resources'] = types.ModuleType('pkg_resources')",
    "caffe2": "sys.modules['caffe2'] = types.ModuleType('caffe2')",
    "numpy_percentile": "import numpy as np; _p = np.percentile; np.percentile = lambda a, q, interpolation=None, **k: _p(a, q, **k)",
}
# The shims each present target switches off.
SHIMS_OF = {
    "compiled_ops": {"compiled_ops_placeholder", "nms_rotated_placeholder"},
    "pillow": {"pillow_linear"},
    "numpy_aliases": {"numpy_aliases"},
    "numpy_in1d": {"numpy_in1d"},
    "pkg_resources": {"pkg_resources_stub"},
    "numpy_percentile": {"numpy_percentile_interpolation"},
    "caffe2": {"caffe2_placeholder"},
}


def _run_compat_with(present: list[str]) -> set[str]:
    """Load compat.py on its own (not through soco_d2/__init__) in a fresh
    interpreter where the given targets already exist; return the shims applied."""
    code = "\n".join(
        ["import importlib.util, sys, types"]
        + [textwrap.dedent(PRESENT[name]) for name in present]
        + [
            f"spec = importlib.util.spec_from_file_location('compat_under_test', {COMPAT_FILE!r})",
            "mod = importlib.util.module_from_spec(spec)",
            "spec.loader.exec_module(mod)",
            "mod.apply()",
            "print('APPLIED=' + ','.join(name.split(':')[0] for name in mod.APPLIED))",
        ]
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("APPLIED=")][-1]
    return set(filter(None, line[len("APPLIED="):].split(",")))


def test_all_targets_present_changes_nothing():
    assert _run_compat_with(list(PRESENT)) == set()


@pytest.mark.parametrize("missing", sorted(PRESENT))
def test_shim_applies_only_for_its_missing_target(missing):
    present = [name for name in PRESENT if name != missing]
    assert _run_compat_with(present) == SHIMS_OF[missing]


def test_targets_really_missing_on_this_stack():
    """Every pre-import shim fired here: this stack needs all of them."""
    applied = {name.split(":")[0] for name in compat.APPLIED}
    if compat.has_compiled_ops():
        pytest.skip("detectron2 with compiled ops installed")
    assert set().union(*SHIMS_OF.values()) <= applied


def test_detectron2_fails_to_import_without_compat():
    if compat.has_compiled_ops():
        pytest.skip("detectron2 with compiled ops installed")
    res = subprocess.run([sys.executable, "-c", "import detectron2.modeling"], capture_output=True, text=True)
    assert res.returncode != 0 and "_C" in res.stderr


def test_placeholder_answers_environment_queries_and_names_missing_features():
    if compat.has_compiled_ops():
        pytest.skip("detectron2 with compiled ops installed")
    from detectron2 import _C
    from detectron2.layers import nms_rotated
    from detectron2.utils.collect_env import collect_env_info

    assert "python-only" in _C.get_compiler_version()
    assert "detectron2" in collect_env_info()
    with pytest.raises(compat.MissingCompiledOpsError, match="deformable conv.*Build detectron2 from source"):
        _C.deform_conv_forward
    boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0]])
    with pytest.raises(compat.MissingCompiledOpsError, match="rotated boxes"):
        nms_rotated(boxes, torch.ones(1), 0.5)


def test_numpy_and_pillow_shims_behave():
    import numpy as np
    from PIL import Image

    assert np.in1d([1, 2, 3], [2]).tolist() == [False, True, False]
    assert Image.LINEAR == Image.BILINEAR
    import pkg_resources

    path = pkg_resources.resource_filename("detectron2.model_zoo", "configs/Base-RCNN-FPN.yaml")
    assert os.path.isfile(path)


def test_stock_coco_evaluator_works_without_fast_eval():
    import detectron2.evaluation.coco_evaluation as coco_evaluation
    from pycocotools.cocoeval import COCOeval

    if not compat.has_compiled_ops():
        assert coco_evaluation.COCOeval_opt is COCOeval


def test_import_without_detectron2_prints_one_clear_error(tmp_path, repo_root):
    """A bare interpreter (fresh venv, no detectron2) importing soco_d2."""
    venv = tmp_path / "bare"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)], check=True)
    res = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import soco_d2"],
        cwd=repo_root, capture_output=True, text=True, timeout=60,
    )
    assert res.returncode != 0
    assert "ImportError: detectron2 is not installed." in res.stderr
    assert "make venv" in res.stderr and "install_detectron2.py" in res.stderr
    assert "During handling of the above exception" not in res.stderr
    assert res.stderr.count("Traceback") == 1
