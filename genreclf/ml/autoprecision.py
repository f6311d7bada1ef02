"""``precision = "auto"`` on a CPU, decided by timing the candidates with the bundle's own network.

CPU flags say what a CPU can compute, not what is fastest for a network: on one AVX-512 BF16 Zen 4
the reference CNN's bfloat16 was 8 % slower than float32 in one run and a tie in another, musicnn's
1.4x faster. oneDNN is fixed when TensorFlow is imported, so each candidate (float32 with oneDNN off,
float32 with it on, bfloat16 with it on where the CPU computes bfloat16 natively) is timed in a fresh
process: best of a few predict calls on random windows, one thread. bfloat16 is chosen only when it
beats the fastest float32 by :data:`MARGIN`, so auto is never slower than float32. The choice is
cached per CPU, TensorFlow version, threads, batch and network architecture, under a file lock: a
machine measures once (~15-20 s a network) and every worker after it reads the file.

``GENRECLF_AUTO_PRECISION=flags`` keeps the CPU-flag rule without timing (the test suite's shared
workers use it); ``GENRECLF_CACHE_DIR`` moves the cache (default ``~/.cache/genreclf``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MODE_ENV = "GENRECLF_AUTO_PRECISION"
CACHE_ENV = "GENRECLF_CACHE_DIR"
#: bfloat16 must be this much faster than the fastest float32 to be chosen (timings vary ~5 % run to run).
MARGIN = 0.05
#: Windows per timed call: a quarter of score's default batch keeps musicnn's slowest candidate (float32,
#: oneDNN off: ~105 ms a window) near 2 s a call; per-window cost hardly moves with the batch on a CPU
#: (19 vs 64 windows a call: x 0.92-1.19, docs/performance.md).
BATCH = 16


@dataclass(frozen=True)
class Choice:
    """What auto computes here: a precision and whether oneDNN runs, with what decided it."""

    precision: str
    onednn: bool
    source: str  # "measured" or "cached"
    timings: dict = field(default_factory=dict)  # candidate label -> seconds per window

    def describe(self) -> str:
        times = ", ".join(f"{k} {1e3 * v:.2f} ms" for k, v in sorted(self.timings.items(), key=lambda kv: kv[1]))
        return f"{self.precision}, oneDNN {'on' if self.onednn else 'off'} ({self.source}{': ' + times if times else ''})"


def label(precision: str, onednn: bool) -> str:
    return f"{precision}/onednn-{'on' if onednn else 'off'}"


def candidates(cpu_bf16: bool) -> list:
    """(precision, oneDNN) pairs worth timing on this CPU."""
    return [("float32", False), ("float32", True), *([("bfloat16", True)] if cpu_bf16 else [])]


def pick(timings: dict) -> tuple:
    """(precision, oneDNN) from ``timings`` {label: seconds per window}: the fastest float32, unless a
    lower precision beats it by more than :data:`MARGIN`. ``onednn`` restricts the choice (a worker
    whose TensorFlow is already imported has its oneDNN fixed)."""
    parsed = {key: (key.split("/")[0], key.endswith("-on")) for key in timings}
    fp32 = min((k for k, (p, _) in parsed.items() if p == "float32"), key=timings.get)
    best = min(timings, key=timings.get)
    chosen = best if parsed[best][0] != "float32" and timings[best] < (1 - MARGIN) * timings[fp32] else fp32
    return parsed[chosen]


def pick_with(timings: dict, onednn: bool) -> tuple:
    """:func:`pick` among the candidates that run with oneDNN ``onednn``."""
    return pick({k: v for k, v in timings.items() if k.endswith("-on") == onednn})


def architecture_digest(model_path: str) -> str:
    """The network's architecture (model.keras's config.json), not its weights: what timing depends on."""
    with zipfile.ZipFile(model_path) as z:
        return hashlib.sha256(z.read("config.json")).hexdigest()[:16]


def _tf_version() -> str:
    """TensorFlow's version from its distribution's metadata (importing it here would fix oneDNN)."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "none"


def cache_path(model_path: str, threads: int, batch: int, cpu: str) -> str:
    key = json.dumps([cpu, _tf_version(), threads, batch, architecture_digest(model_path)])
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "genreclf")
    return os.path.join(root, f"precision-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json")


def time_candidate(bundle_dir: str, precision: str, onednn: bool, threads: int, batch: int) -> float:
    """Seconds per window of ``precision`` with oneDNN ``onednn``, in a fresh process."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1" if onednn else "0", TF_CPP_MIN_LOG_LEVEL="3")
    env[MODE_ENV] = "flags"
    out = subprocess.run([sys.executable, "-m", "genreclf.ml.candidate_timing", bundle_dir, precision, str(threads),
                          str(batch)], capture_output=True, text=True, env=env, timeout=600)
    if out.returncode:
        raise RuntimeError(f"timing {label(precision, onednn)} failed: {out.stderr.strip()[-500:]}")
    return float(out.stdout.split()[-1])


def measuring() -> bool:
    """Whether auto is timed here (``GENRECLF_AUTO_PRECISION``: "measure", the default, or "flags")."""
    mode = os.environ.get(MODE_ENV, "measure").strip().lower()
    if mode not in ("measure", "flags"):
        raise ValueError(f"{MODE_ENV}={mode!r}: use 'measure' (time the candidates) or 'flags' (by CPU flags)")
    return mode == "measure"


def choose(bundle_dir: str, model_path: str, threads: int, *, cpu_bf16: bool, cpu: str,
           batch: int = BATCH) -> Choice | None:
    """auto's precision for this bundle on this CPU: measured once per machine and architecture, then
    read. None when it cannot be measured (a cache directory it cannot write, a candidate that fails):
    the caller then takes the CPU-flag rule, said in one warning."""
    try:
        path = cache_path(model_path, threads, batch, cpu)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process measures; the others wait and read its result
            timings, source = _read(path), "cached"
            if timings is None:
                timings, source = _measure(bundle_dir, path, threads, batch, cpu_bf16, cpu), "measured"
    except (OSError, RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        log.warning("precision auto: could not time the candidates (%s); deciding by CPU flags (set %s=flags "
                    "to skip the timing, or %s to a writable directory)", e, MODE_ENV, CACHE_ENV)
        return None
    precision, onednn = pick(timings)
    return Choice(precision, onednn, source, timings)


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)["timings"]
    except (OSError, ValueError, KeyError):  # absent, or a half-written file of a killed process
        return None


def _measure(bundle_dir: str, path: str, threads: int, batch: int, cpu_bf16: bool, cpu: str) -> dict:
    started = time.monotonic()
    timings = {label(p, o): time_candidate(bundle_dir, p, o, threads, batch) for p, o in candidates(cpu_bf16)}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"cpu": cpu, "tensorflow": _tf_version(), "threads": threads, "batch": batch, "timings": timings},
                  f, indent=1)
    os.replace(tmp, path)
    log.info("precision auto: timed %s in %.0f s (kept in %s)", ", ".join(timings), time.monotonic() - started, path)
    return timings
