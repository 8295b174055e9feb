"""soco_d2: detection-aligned self-supervised pretraining on detectron2.

detectron2 is deliberately not listed: it is not on PyPI.  `make venv` (or
`python tools/install_detectron2.py`) installs it; `import soco_d2` says how
when it is missing.
"""
from setuptools import find_packages, setup

setup(
    name="soco_d2",
    version="0.1.0",
    description="SoCo, DetCon, DenseCL, BYOL and MoCo-v2 pretraining on detectron2's Mask R-CNN stack",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["soco_d2", "soco_d2.*"]),
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
        # LVIS loader and evaluator.  lvis 0.5.3 also declares opencv-python, which
        # shares the cv2 folder with opencv-contrib-python-headless and would drop
        # ximgproc (selective search): `make venv` installs it with --no-deps instead
        # (its code needs only numpy, pycocotools, matplotlib and cv2, all required above).
        "lvis": ["lvis>=0.5.3"],
        "test": ["pytest>=7", "pytest-timeout", "hypothesis>=6"],
    },
    include_package_data=False,
)
