"""soco_d2: detection-aligned self-supervised pretraining on detectron2.

detectron2 is deliberately not listed: it is not on PyPI.  `make venv` (or
`python tools/install_detectron2.py`) installs it; `import soco_d2` says how
when it is missing.

The top-level `configs/` and `tools/` folders are the sources; like detectron2
does with its configs, this script links them into the package
(`soco_d2/model_zoo/configs`, `soco_d2/tools`; copies where links are not
possible) so that an installed soco_d2 ships them: the configs as package data
(`soco_d2.model_zoo.get_config_file`), the tools behind the console entry points.
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.realpath(__file__))
# source folder -> where the package sees it
LINKS = {"configs": os.path.join("soco_d2", "model_zoo", "configs"), "tools": os.path.join("soco_d2", "tools")}


def link_into_package(source: str, destination: str) -> None:
    source, destination = os.path.join(HERE, source), os.path.join(HERE, destination)
    if not os.path.exists(source):  # building from an sdist that already holds the copies
        return
    if os.path.islink(destination):
        os.unlink(destination)
    elif os.path.isdir(destination):
        shutil.rmtree(destination)
    try:
        os.symlink(os.path.relpath(source, os.path.dirname(destination)), destination)
    except OSError:
        shutil.copytree(source, destination)


for _source, _destination in LINKS.items():
    link_into_package(_source, _destination)

CONFIGS = sorted(os.path.relpath(p, os.path.join(HERE, "soco_d2", "model_zoo"))
                 for p in glob.glob(os.path.join(HERE, "soco_d2", "model_zoo", "configs", "**", "*.yaml"), recursive=True))
TOOLS = {
    "soco-d2-pretrain": "pretrain_net",
    "soco-d2-transfer": "transfer_net",
    "soco-d2-precompute": "precompute_proposals",
    "soco-d2-convert": "convert_to_d2",
    "soco-d2-visualize": "visualize_proposals",
    "soco-d2-audit": "audit_detectron2",
    "soco-d2-collect-results": "collect_results",
    "soco-d2-probe": "probe_net",
    "soco-d2-plot-metrics": "plot_metrics",
}

setup(
    name="soco_d2",
    version="0.1.0",
    description="SoCo, DetCon, DenseCL, BYOL and MoCo-v2 pretraining on detectron2's Mask R-CNN stack",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["soco_d2", "soco_d2.*"]),
    package_data={"soco_d2.model_zoo": CONFIGS},
    entry_points={"console_scripts": [f"{name}=soco_d2.tools.{module}:cli" for name, module in TOOLS.items()]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy>=1.24",
        "pillow>=9.0",
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.10",
        "pycocotools>=2.0.2",
        "opencv-contrib-python-headless>=4.5",
        "scikit-image>=0.19",
        "selectivesearch>=0.4",
        "tqdm>=4.29",
        "tensorboard",
        "cloudpickle",
        "omegaconf>=2.1",
        "pyyaml>=5.1",
        "matplotlib",
    ],
    extras_require={
        "cityscapes": ["cityscapesscripts>=2.2", "shapely"],
        # LVIS (loader, evaluator): no extra, on purpose. lvis 0.5.3 declares opencv-python,
        # which shares the cv2 folder with opencv-contrib-python-headless and would drop
        # ximgproc (selective search); install it with `pip install --no-deps lvis==0.5.3`
        # (its code needs only numpy, pycocotools, matplotlib and cv2, all required above).
        "test": ["pytest>=7", "pytest-timeout", "hypothesis>=6", "build>=1.0", "twine>=5"],
    },
    include_package_data=False,
)
