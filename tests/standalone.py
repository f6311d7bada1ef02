"""A real Spark standalone cluster on 127.0.0.1: one master and N workers, started from pyspark's
own launcher classes and stopped by their process ids (never by name)."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

from tests import hostenv, submit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answers(proc: subprocess.Popen, url: str, log: str, timeout: float, name: str) -> bool:
    """Poll ``url`` until a test server started as ``proc`` answers (True) or ``timeout`` passes
    (False); a server that exits meanwhile is an error showing the end of its ``log``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {open(log).read()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return True
        except OSError:
            time.sleep(0.3)
    return False


class StandaloneCluster:
    def __init__(self, workdir, workers=2, cores=1, memory="1g", gpus=()):
        """``gpus``: GPU addresses each worker announces (a discovery script that prints them), so
        applications can ask for ``spark.executor.resource.gpu.amount`` even on a machine without one."""
        import pyspark

        self.home = os.path.dirname(pyspark.__file__)
        self.workdir = str(workdir)
        self.n_workers, self.cores, self.memory, self.gpus = workers, cores, memory, list(gpus)
        self.port, self.ui_port = free_port(), free_port()
        self.procs = []

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def _gpu_options(self) -> str:
        script = os.path.join(self.workdir, "gpus.sh")
        with open(script, "w") as f:
            f.write("#!/bin/sh\necho '" + json.dumps({"name": "gpu", "addresses": self.gpus}) + "'\n")
        os.chmod(script, 0o755)
        return (f"-Dspark.worker.resource.gpu.amount={len(self.gpus)} "
                f"-Dspark.worker.resource.gpu.discoveryScript={script}")

    def _launch(self, name, *args):
        env = hostenv.launch_env(SPARK_HOME=self.home, SPARK_LOCAL_IP="127.0.0.1", SPARK_DAEMON_JAVA_OPTS=" ".join(
            filter(None, [os.environ.get("SPARK_DAEMON_JAVA_OPTS"), submit.JVM_OPTIONS])),
                                 SPARK_LOG_DIR=self.workdir, SPARK_WORKER_DIR=os.path.join(self.workdir, "work"))
        if self.gpus and name.startswith("worker"):
            env["SPARK_WORKER_OPTS"] = " ".join(filter(None, [env.get("SPARK_WORKER_OPTS"), self._gpu_options()]))
        log = open(os.path.join(self.workdir, f"{name}.log"), "w")
        proc = subprocess.Popen([os.path.join(self.home, "bin", "spark-class"), *args], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def alive_workers(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=2) as r:
                state = json.load(r)
        except OSError:
            return -1
        return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")

    def start(self, timeout=120):
        return self.launch().ready(timeout)

    def launch(self):
        """Start the master's and workers' JVMs and return at once (:meth:`ready` waits for them)."""
        self._launch("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                     "--port", str(self.port), "--webui-port", str(self.ui_port))
        for i in range(self.n_workers):
            self._launch(f"worker{i}", "org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1",
                         "--cores", str(self.cores), "--memory", self.memory, "--webui-port", str(free_port()),
                         "--work-dir", os.path.join(self.workdir, f"work{i}"))
        return self

    def ready(self, timeout=120):
        """Wait until every worker is registered with the master; a daemon that died stops the rest."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.alive_workers() == self.n_workers:
                return self
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(1)
        self.stop()
        logs = {f: open(os.path.join(self.workdir, f)).read()[-2000:] for f in os.listdir(self.workdir) if f.endswith(".log")}
        raise RuntimeError(f"standalone cluster did not come up: {logs}")

    def executors(self) -> list:
        """PIDs of this cluster's executor JVMs (children of its worker processes)."""
        workers = {p.pid for p in self.procs[1:]}
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if ppid in workers and b"CoarseGrainedExecutorBackend" in cmd:
                found.append(int(entry))
        return found

    def stop(self):
        for proc in self.procs:
            try:  # the launcher's own process group only, even when its leader has exited (seen once: a
                os.killpg(proc.pid, signal.SIGTERM)  # master and two workers outlived a failed cluster start)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs = []
