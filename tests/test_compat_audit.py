"""tools/audit_detectron2.py: the AST scan finds removed APIs (and only those) in
real source, every hit in the installed detectron2 is covered, and the README
block is what the audit generates."""
import os
import subprocess
import sys
import textwrap

import pytest

from soco_d2 import compat_audit


@pytest.fixture(scope="module")
def detectron2_report():
    return compat_audit.audit("detectron2")


def _hits(report, api):
    return [h for h in report.hits if h.api == api]


def test_every_hit_in_installed_detectron2_is_shimmed_or_listed(detectron2_report):
    report = detectron2_report
    assert report.n_files > 100 and len(report.hits) > 20
    assert not report.uncovered, compat_audit.format_text(report)
    (retry,) = _hits(report, "random.Random.sample(set)")
    assert (retry.path, retry.scope, retry.verdict) == (
        "detectron2/data/common.py", "MapDataset.__getitem__", compat_audit.SHIMMED)
    assert {h.verdict for h in _hits(report, "pkg_resources")} == {compat_audit.SHIMMED}
    assert {h.verdict for h in _hits(report, "numpy.percentile(interpolation=)")} == {compat_audit.SHIMMED}
    assert {h.verdict for h in _hits(report, "torch.load(weights_only default)")} == {compat_audit.UNSUPPORTED_VERDICT}
    (linear,) = _hits(report, "PIL.Image.LINEAR")
    assert linear.missing_here  # resolved on the bare stack, before any shim
    assert "ExtentTransform" in linear.scope


def test_readme_block_is_up_to_date(detectron2_report, repo_root):
    with open(os.path.join(repo_root, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    block = compat_audit.format_markdown(detectron2_report)
    assert compat_audit.replace_readme_block(readme, block) == readme, (
        "README's audit block is stale: run `python tools/audit_detectron2.py --update-readme README.md`"
    )


FAKE_MODULE = '''
import collections
import imp
import os
import random
import numpy as np
import torch
from PIL import Image, ImageDraw
from collections import Mapping


class Loader:
    def __init__(self, n):
        self._rng = random.Random(0)
        self._pool = set(range(n))
        self._order = list(range(n))

    def pick(self):
        bad = self._rng.sample(self._pool, k=1)
        fine = self._rng.sample(self._order, k=1)
        return bad, fine


def work(path, draw, arr):
    random.sample({1, 2, 3}, 2)
    random.sample(sorted({1, 2}), 1)
    random.randrange(10 / 2)
    random.randrange(2)
    a = np.float_(1.0) + np.asarray(arr).sum()
    b = np.array(arr, copy=False)
    c = np.sum(x for x in arr)
    d = np.this_name_was_never_in_numpy
    im = Image.open(path).resize((2, 2), Image.ANTIALIAS)
    w, h = draw.textsize("text")
    size = os.path.getsize(path)
    ok = torch.load(path, weights_only=True)
    risky = torch.load(path)
    isinstance(arr, collections.Sequence)
    return a, b, c, d, im, w, h, size, ok, risky
'''


def test_scanner_finds_removed_apis_through_aliases_and_types(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepkg_audit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(textwrap.dedent(FAKE_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    report = compat_audit.audit("fakepkg_audit")
    found = {(h.line, h.api) for h in report.hits}
    lines = textwrap.dedent(FAKE_MODULE).splitlines()

    def line_of(fragment):
        (n,) = [i + 1 for i, text in enumerate(lines) if fragment in text]
        return n

    expected = {
        (line_of("import imp"), "imp"),
        (line_of("from collections import Mapping"), "collections.Mapping"),
        (line_of("self._rng.sample(self._pool"), "random.Random.sample(set)"),
        (line_of("random.sample({1, 2, 3}"), "random.sample(set)"),
        (line_of("random.randrange(10 / 2)"), "random.randrange(non-integer)"),
        (line_of("np.float_(1.0)"), "numpy.float_"),
        (line_of("copy=False"), "numpy.array(copy=False)"),
        (line_of("np.sum(x for"), "numpy.sum(generator)"),
        (line_of("np.this_name_was_never_in_numpy"), "numpy.this_name_was_never_in_numpy"),
        (line_of("Image.ANTIALIAS"), "PIL.Image.ANTIALIAS"),
        (line_of("draw.textsize"), "PIL.ImageDraw.ImageDraw.textsize"),
        (line_of("risky = torch.load"), "torch.load(weights_only default)"),
        (line_of("collections.Sequence"), "collections.Sequence"),
    }
    assert found == expected
    by_api = {h.api: h for h in report.hits}
    assert by_api["numpy.this_name_was_never_in_numpy"].change.removed_in.startswith("missing in numpy")
    assert by_api["numpy.this_name_was_never_in_numpy"].verdict == compat_audit.NOT_COVERED
    assert by_api["PIL.Image.ANTIALIAS"].change.removed_in == "10.0"
    assert by_api["imp"].change.removed_in == "3.12"
    assert by_api["random.Random.sample(set)"].verdict == compat_audit.NOT_COVERED  # the shim fixes MapDataset only
    assert by_api["numpy.float_"].missing_here is True


def test_cli_exit_status_and_output(repo_root):
    res = subprocess.run(
        [sys.executable, os.path.join(repo_root, "tools", "audit_detectron2.py")],
        capture_output=True, text=True, timeout=600, cwd=repo_root,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "detectron2/data/common.py:98 [MapDataset.__getitem__]" in res.stdout
    assert "-> shimmed: compat shim mapdataset_set_sampling" in res.stdout
    assert res.stdout.rstrip().splitlines()[-1].endswith("0 not covered")
