#!/usr/bin/env python
"""Make detectron2 importable in the current Python environment.

* If ``import detectron2`` already works (for example a build from source with
  its CUDA ops), nothing is installed and the script says which one it found.
* Otherwise the PyPI sdist ``pb1-detectron2==0.6`` (upstream v0.6 Python code
  without the C++ sources) is downloaded and installed Python-only: its
  ``setup.py`` is patched to drop the C++ extension and the stale pins (black,
  future, pydot, hydra-core), and its model-zoo configs are moved where
  ``setup.py`` looks for them so all 128 files are installed.

Only the package registries configured for pip are needed.  The compiled-op
features this leaves out are listed in soco_d2/compat.py and the README.

Usage: python tools/install_detectron2.py [--constraints constraints.txt] [--force]
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

SDIST = "pb1-detectron2==0.6"
# setup.py lines removed: the C++ extension (its sources are not in the sdist)
# and pins that are only needed for caffe2 export or LazyConfig.to_py.
SETUP_PY_DROPPED = (
    r"^\s*ext_modules=get_extensions\(\),\s*$",
    r'^\s*cmdclass=\{"build_ext".*$',
    r'^\s*"black==21\.4b2",.*$',
    r'^\s*"future",.*$',
    r'^\s*"pydot",.*$',
    r'^\s*"hydra-core>=1\.1",.*$',
)


def log(msg: str) -> None:
    print(f"[install_detectron2] {msg}", flush=True)


def find_existing() -> str | None:
    """Return a description of an importable detectron2, or None."""
    code = (
        "import importlib.util, os, detectron2\n"
        "c = importlib.util.find_spec('detectron2._C') is not None\n"
        "print(detectron2.__version__, os.path.dirname(detectron2.__file__), 'with compiled ops' if c else 'python-only')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else None


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    log("running: " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def patch_setup_py(path: str) -> None:
    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    patterns = [re.compile(p) for p in SETUP_PY_DROPPED]
    kept = [line for line in lines if not any(p.match(line.rstrip("\n")) for p in patterns)]
    dropped = len(lines) - len(kept)
    if dropped != len(patterns):
        raise RuntimeError(
            f"expected to drop {len(patterns)} lines from {path}, dropped {dropped}: the sdist changed; "
            "install detectron2 by hand (see README)"
        )
    with open(path, "w") as f:
        f.writelines(kept)


def install_from_sdist(constraints: str | None) -> None:
    try:
        import torch  # noqa: F401  (setup.py imports torch, so it must be installed first)
    except ImportError:
        sys.exit("[install_detectron2] torch must be installed first (make venv does this).")
    work = tempfile.mkdtemp(prefix="d2-sdist-")
    try:
        pip("download", "--no-deps", "--no-build-isolation", "--no-binary", ":all:", SDIST, "-d", work)
        (archive,) = glob.glob(os.path.join(work, "pb1-detectron2-*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        src = os.path.join(work, os.path.basename(archive)[: -len(".tar.gz")])
        patch_setup_py(os.path.join(src, "setup.py"))
        # setup.py globs a top-level configs/ and symlinks it into model_zoo/.
        shutil.move(os.path.join(src, "detectron2", "model_zoo", "configs"), os.path.join(src, "configs"))
        args = ["install", "--no-build-isolation", src]
        if constraints:
            args += ["-c", constraints]
        pip(*args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--constraints", help="pip constraints file to keep dependency versions pinned")
    parser.add_argument("--force", action="store_true", help="reinstall the sdist even if detectron2 imports")
    args = parser.parse_args()

    existing = None if args.force else find_existing()
    if existing:
        log(f"using the detectron2 already installed: {existing}; nothing installed")
        return
    start = time.time()
    log(f"detectron2 not importable in {sys.executable}; installing {SDIST} (Python-only, no compiled ops)")
    install_from_sdist(args.constraints)
    found = find_existing()
    if not found:
        sys.exit("[install_detectron2] installation finished but `import detectron2` still fails")
    n_configs = len(glob.glob(os.path.join(found.split()[1], "model_zoo", "configs", "**", "*.yaml"), recursive=True))
    log(f"installed detectron2 {found} with {n_configs} model-zoo yaml configs in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
