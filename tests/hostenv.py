"""What the suite's outcome may depend on in the host, pinned or made explicit.

- oneDNN: genreclf chooses it per process (genreclf.ml.tfsetup); TensorFlow's own default depends on the
  CPU (on with AVX-512 VNNI / BF16 or AMX, off with AVX2 only). The test process's TensorFlow, which
  many tests import directly, is pinned to what training and evaluation choose (off). The processes
  the tests start (spark-submit, a fresh Python) get the environment the suite was started with, and
  decide for themselves as in production. The shared local session's Python workers serve many jobs,
  and a process's oneDNN is fixed by its first job: they are pinned to what a default (precision
  auto) score chooses on this CPU, so that auto resolves the same whatever ran before.
- auto precision: timed per machine and network in production (genreclf.ml.autoprecision, ~15-20 s per
  architecture, and every test bundle is one); the suite's processes take the CPU-flag rule
  (``GENRECLF_AUTO_PRECISION=flags``), which :func:`auto_precision` predicts. The timing has its own tests.
- CPU flags: ``GENRECLF_CPU_FLAGS`` (genreclf.ml.inference) replaces /proc/cpuinfo's flags, in this
  process and every process it starts: ``GENRECLF_CPU_FLAGS=avx512_bf16 make test`` runs the suite as on
  a CPU with native bfloat16, ``GENRECLF_CPU_FLAGS=none make test`` as on an AVX2-only CPU.
"""

from __future__ import annotations

import contextlib
import os

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
#: The suite's own setting of oneDNN (None: each process decides, as in production).
STARTED_WITH = os.environ.get(ONEDNN_ENV)


def pin_test_process() -> None:
    """Before TensorFlow is imported here: oneDNN as training chooses it, unless the user set it; auto
    precision by CPU flags here and in every process the suite starts."""
    from genreclf.ml.autoprecision import MODE_ENV

    os.environ.setdefault(ONEDNN_ENV, "0")
    os.environ[MODE_ENV] = "flags"


def launch_env(**extra) -> dict:
    """This process's environment for a process it starts, with oneDNN as the suite was started."""
    env = dict(os.environ, **extra)
    if STARTED_WITH is None:
        env.pop(ONEDNN_ENV, None)
    else:
        env[ONEDNN_ENV] = STARTED_WITH
    return env


@contextlib.contextmanager
def launching():
    """os.environ as :func:`launch_env` while a process is started by library code (Spark's JVM)."""
    saved, launched = dict(os.environ), launch_env()
    os.environ.clear()
    os.environ.update(launched)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def session_worker_onednn() -> str:
    """TF_ENABLE_ONEDNN_OPTS of the shared session's Python workers: the suite's setting, else
    what genreclf.ml.inference.prepare_process chooses for precision auto on this CPU."""
    from genreclf.ml.inference import cpu_has_bf16

    return STARTED_WITH if STARTED_WITH is not None else ("1" if cpu_has_bf16() else "0")


def auto_precision(gpu_task: bool = False) -> str:
    """What ``[score] precision = "auto"`` computes in a CPU worker started with :func:`launch_env`
    (``gpu_task``: a task Spark gave a GPU that TensorFlow cannot see: genreclf keeps oneDNN off)."""
    from genreclf.ml.inference import cpu_has_bf16, resolve

    if STARTED_WITH is None:
        onednn = cpu_has_bf16() and not gpu_task  # genreclf.ml.inference.prepare_process's choice
    else:
        from genreclf.ml.tfsetup import onednn_enabled

        onednn = onednn_enabled(STARTED_WITH)
    return resolve("auto", has_gpu=False, cpu_bf16=cpu_has_bf16() and onednn)


#: bfloat16 keeps 8 significant bits: one rounding is off by at most 2^-8 of the value.
BF16_EPS = 2.0 ** -8


def bf16_probability_bound(logit_scale: float, roundings: int) -> float:
    """First-order bound on |dp| of softmax probabilities whose logits (largest magnitude
    ``logit_scale``) went through ``roundings`` bfloat16 roundings of relative error <= 2^-8:
    |dz| <= roundings * 2^-8 * logit_scale, and |dp| <= |dz|/2 (the softmax Jacobian
    diag(p) - p p^T has infinity-norm max 2 p (1 - p) <= 1/2). A mean of such probabilities
    (a track's) is within the same bound."""
    return 0.5 * roundings * BF16_EPS * logit_scale
