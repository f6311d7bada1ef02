"""The two installs: CPU (requirements.txt) and a GPU node's (requirements-gpu.txt) share every pin but
TensorFlow's wheel, never both; the CPU environment the tests run in is consistent (pip check)."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.pure  # no Spark, no training: pytest -m pure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lines(name):
    with open(os.path.join(ROOT, name)) as f:
        return {line.split("#", 1)[0].strip() for line in f} - {""}


def test_cpu_and_gpu_installs_differ_only_in_the_tensorflow_wheel():
    assert lines("requirements.txt") == {"-r requirements-base.txt", "tensorflow-cpu==2.21.0"}
    assert lines("requirements-gpu.txt") == {"-r requirements-base.txt", "tensorflow[and-cuda]==2.21.0"}
    assert not any(p.startswith("tensorflow") for p in lines("requirements-base.txt"))


def test_the_environment_is_consistent():
    res = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
