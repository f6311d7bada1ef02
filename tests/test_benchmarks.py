"""The accelerator benchmark runs wherever Keras does: here on the CPU, through TensorFlow; on a GPU node
with numpy, Keras and JAX only (``KERAS_BACKEND=jax python -m benchmarks.gpu``), so it imports nothing else."""

import ast
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.pure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _imported_modules(path: str) -> set:
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_gpu_benchmark_needs_only_numpy_keras_and_genreclfs_networks():
    """Everything it imports, followed through genreclf's own modules: numpy, keras, a backend, the stdlib."""
    seen, todo, outside = set(), ["benchmarks.gpu"], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for candidate in (module.replace(".", "/") + ".py", module.replace(".", "/") + "/__init__.py"):
            if os.path.isfile(os.path.join(ROOT, candidate)):
                for name in _imported_modules(os.path.join(ROOT, candidate)):
                    if name.split(".")[0] in ("genreclf", "benchmarks"):
                        todo += [name, *([name.rsplit(".", 1)[0]] if "." in name else [])]
                    else:
                        outside.add(name.split(".")[0])
                break
    allowed = set(sys.stdlib_module_names) | {"numpy", "keras", "jax", "tensorflow", "torch"}
    assert outside <= allowed, sorted(outside - allowed)


def test_the_gpu_benchmark_runs_on_the_cpu_here(tmp_path):
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--seconds", "0", "--batch", "2", "--train-batch", "2",
                    "--precision", "float32", "--json", str(out)], check=True, cwd=ROOT, timeout=300,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    result = json.loads(out.read_text())
    assert result["backend"] == "tensorflow" and result["device"].startswith("cpu: ")
    assert [(r["what"], r["precision"]) for r in result["rows"]] == [
        ("reference CNN inference", "float32"), ("musicnn inference", "float32"),
        ("reference CNN training step", "float32")]
    assert all(r["windows_per_s"] > 0 for r in result["rows"])


def test_the_stage_split_times_every_stage_of_the_floor_and_the_jobs_own_work(tmp_path, make_audio):
    """benchmarks.stages times each stage of featurize's per-track work on its own (make bench)."""
    from benchmarks.stages import STAGES, split_featurize

    paths = [make_audio(tmp_path / f"t{i}.mp3", 4.0, sr=44100, channels=2, seed=i) for i in range(2)]
    spent = split_featurize(paths)
    assert list(spent) == list(STAGES) and all(s > 0 for s in spent.values()), spent
