"""A real MLflow tracking server on 127.0.0.1 for the tests: ``mlflow server`` with a SQLite backend
store and a local artifact root, in its own process group (the server and its uvicorn worker),
stopped by its PID."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from tests.standalone import free_port, wait_until_answers


class MlflowServer:
    def __init__(self, workdir):
        self.workdir = str(workdir)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = os.path.join(self.workdir, f"mlflow-{self.port}.log")
        self.proc = None

    def start(self, timeout=90):
        return self.launch().ready(timeout)

    def launch(self):
        """Start the server's process and return at once (:meth:`ready` waits until it answers)."""
        exe = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job-runner processes to stop
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [exe, "server", "--backend-store-uri", f"sqlite:///{self.workdir}/mlflow.db",
                 "--artifacts-destination", os.path.join(self.workdir, "artifacts"), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=self.workdir)
        return self

    def ready(self, timeout=90):
        if wait_until_answers(self.proc, self.uri + "/health", self.log, timeout, "mlflow server"):
            return self
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout} s: {open(self.log).read()[-2000:]}")

    def stop(self):
        """SIGTERM to the server's process group (its PID: start_new_session), SIGKILL after 10 s."""
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(10)
                time.sleep(0.2)  # the worker leaves with its parent
            except subprocess.TimeoutExpired:
                continue
        self.proc = None
