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
