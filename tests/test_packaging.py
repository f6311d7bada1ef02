"""The two installs: CPU (requirements.txt) and a GPU node's (requirements-gpu.txt) share every pin but
TensorFlow's wheel, never both; the CPU environment the tests run in is consistent (pip check)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pins(name):
    out = []
    with open(os.path.join(ROOT, name)) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line.startswith("-r"):
                out += pins(line[2:].strip())
            elif line:
                out.append(line)
    return out


def test_cpu_and_gpu_installs_differ_only_in_the_tensorflow_wheel():
    cpu, gpu = set(pins("requirements.txt")), set(pins("requirements-gpu.txt"))
    assert cpu - gpu == {"tensorflow-cpu==2.21.0"}
    assert gpu - cpu == {"tensorflow[and-cuda]==2.21.0"}
    assert not any(p.startswith("tensorflow") for p in pins("requirements-base.txt"))


def test_the_environment_is_consistent():
    res = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
