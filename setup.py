"""genreclf: distributed music-genre classification on Spark."""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _requirements(name):
    with open(os.path.join(HERE, name)) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith(("#", "-r"))]


with open(os.path.join(HERE, "genreclf", "__init__.py")) as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

setup(
    name="genreclf",
    version=VERSION,
    description="Distributed music-genre classification: featurize, train and score on Apache Spark",
    packages=find_packages(include=["genreclf", "genreclf.*"]),
    python_requires=">=3.10,<3.13",
    install_requires=_requirements("requirements.txt"),
    extras_require={
        # A GPU training node: TensorFlow with CUDA instead of the CPU build.
        "gpu": ["tensorflow[and-cuda]==2.21.0"],
        "dev": ["pytest==8.4.2", "pytest-timeout==2.4.0"],
    },
)
