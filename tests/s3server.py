"""A real S3-compatible server on 127.0.0.1 for the tests (moto's server mode, from PyPI), and a TCP
proxy in front of it whose connections the tests can cut, to play a store that drops mid-read."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

from tests.standalone import free_port, wait_until_answers

#: Credentials moto accepts; set in the environment of the tests and shipped to Spark workers.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}


class MotoServer:
    """``moto_server`` in its own process on a free port; stopped by its PID."""

    def __init__(self, workdir, env: dict | None = None):
        self.env = dict(os.environ, **(env or {}))
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = os.path.join(str(workdir), f"moto-{self.port}.log")
        self.proc = None

    def start(self, timeout=60):
        return self.launch().ready(timeout)

    def launch(self):
        """Start the server's process and return at once (:meth:`ready` waits until it answers)."""
        exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True, env=self.env)
        return self

    def ready(self, timeout=60):
        if wait_until_answers(self.proc, self.endpoint + "/moto-api/", self.log, timeout, "moto_server"):
            return self
        self.stop()
        raise RuntimeError(f"moto_server did not answer within {timeout} s")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


class CuttableProxy:
    """Forwards 127.0.0.1:port to a target port. ``cut()`` closes every open connection (a store that
    drops mid-read); ``refuse(True)`` closes new connections at once (a store that stays down)."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._conns: list = []
        self._lock = threading.Lock()
        self._refuse = False
        self.bytes_sent = 0
        self.cut_at = None  # cut every connection once this many bytes have gone to clients
        self.cuts = 0
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except (socket.timeout, OSError):
                continue
            if self._refuse:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src, dst, downstream):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if downstream and self.cut_at is not None and self.bytes_sent + len(data) > self.cut_at:
                    self.cut_at = None
                    dst.sendall(data[: len(data) // 2])  # half a chunk, then the connection drops
                    self.cut()
                    break
                dst.sendall(data)
                if downstream:
                    self.bytes_sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        self.cuts += 1
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def refuse(self, on: bool):
        self._refuse = on
        if on:
            self.cut()

    def close(self):
        self._stop.set()
        self.cut()
        self._server.close()
        self._thread.join(5)


@contextlib.contextmanager
def bucket_outputs(server: MotoServer, bucket: str):
    """A new bucket of ``server`` for a test's outputs, this process's storage pointed at the server
    meanwhile: yields (the outputs' root URL, the environment a spark-submit run needs to reach it)."""
    import pyarrow.fs as pafs

    from genreclf.io import storage

    previous = storage.options()["endpoint_url"]
    storage.configure({"endpoint_url": server.endpoint})
    fs = pafs.S3FileSystem(endpoint_override=server.endpoint.split("://")[1], scheme="http", allow_bucket_creation=True)
    fs.create_dir(bucket)
    try:
        yield f"s3://{bucket}/out", {"AWS_ENDPOINT_URL": server.endpoint}
    finally:
        storage.configure({"endpoint_url": previous})
