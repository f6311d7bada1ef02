"""The one way tests run ``spark-submit.sh``: the environment the suite was started with (tests/hostenv.py),
this interpreter for the jobs, Spark bound to 127.0.0.1."""

import os
import subprocess
import sys

from tests import hostenv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBMIT = os.path.join(ROOT, "spark-submit.sh")


#: The test runs' JVMs compile with C1 only: a job of seconds pays C2's compile threads and gains
#: nothing from them (a tiny featurize run: 11.2 -> 8.4 CPU-s, 8.3 -> 7.6 s here; behaviour the same).
JVM_OPTIONS = "-XX:TieredStopAtLevel=1"


def env(**extra) -> dict:
    opts = " ".join(filter(None, [os.environ.get("SPARK_SUBMIT_OPTS"), JVM_OPTIONS]))
    return hostenv.launch_env(GENRECLF_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1", SPARK_SUBMIT_OPTS=opts,
                              **extra)


def command(*args) -> list:
    return [SUBMIT, *map(str, args)]


def run(*args, check: bool = True, timeout: int = 900, **kw) -> subprocess.CompletedProcess:
    """Run ``spark-submit.sh ARGS``; with ``check``, a failure shows the end of its output. The
    result's ``.output`` is stdout and stderr together."""
    res = subprocess.run(command(*args), capture_output=True, text=True, env=env(), timeout=timeout, **kw)
    res.output = res.stdout + res.stderr
    if check:
        assert res.returncode == 0, res.output[-4000:]
    return res
