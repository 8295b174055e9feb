"""Test session set-up: datasets go to a temporary folder, set before detectron2
reads DETECTRON2_DATASETS (at import of detectron2.data)."""
import os
import shutil
import sys
import tempfile

import pytest

_SESSION_DIR = tempfile.mkdtemp(prefix="soco_d2-tests-")
os.environ.setdefault("DETECTRON2_DATASETS", os.path.join(_SESSION_DIR, "datasets"))
os.environ.setdefault("SOCO_D2_DEMO_ROOT", os.path.join(_SESSION_DIR, "demo"))
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import soco_d2  # noqa: E402,F401  (compat shims before any detectron2 import)
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


def pytest_sessionfinish(session, exitstatus):
    """The session folder holds only regenerable demo data: leave no trace in /tmp."""
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.soco_d2_passed = report.passed


@pytest.fixture(autouse=True)
def remove_tmp_path_of_passed_tests(request):
    """A passed test's tmp_path goes at once, not at the end of the session: pretraining tests
    write checkpoints of 100+ MB each, and a run must stay under ~2 GB of temporary files
    (pytest.ini keeps failed tests' folders for inspection)."""
    yield
    path = request.node.funcargs.get("tmp_path")
    if path is not None and getattr(request.node, "soco_d2_passed", False):
        shutil.rmtree(path, ignore_errors=True)
