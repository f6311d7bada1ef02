"""genreclf: distributed music-genre classification on Spark."""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _requirements(name):
    """Pinned requirements of a requirements file, following its ``-r`` includes."""
    out = []
    with open(os.path.join(HERE, name)) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line.startswith("-r"):
                out += _requirements(line[2:].strip())
            elif line:
                out.append(line)
    return out


with open(os.path.join(HERE, "genreclf", "__init__.py")) as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

setup(
    name="genreclf",
    version=VERSION,
    description="Distributed music-genre classification: featurize, train and score on Apache Spark",
    packages=find_packages(include=["genreclf", "genreclf.*"]),
    python_requires=">=3.11,<3.13",  # tomllib
    # TensorFlow comes from one extra, never both: its CPU and CUDA wheels install the same package.
    install_requires=_requirements("requirements-base.txt"),
    extras_require={
        "cpu": [r for r in _requirements("requirements.txt") if r.startswith("tensorflow")],
        "gpu": [r for r in _requirements("requirements-gpu.txt") if r.startswith("tensorflow")],
        "mlflow": _requirements("requirements-mlflow.txt"),
        "dev": _requirements("requirements-dev.txt"),
    },
)
