"""Plumbing shared by benchmarks: a simulator process, throwaway databases, timing."""
import os
import socket
import subprocess
import sys
import time
import uuid

import requests
import sqlalchemy as sa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Simulators listen on 127.0.0.1, which the SSRF guard refuses unless told (docs/SECURITY.md).
os.environ.setdefault("SYNCHUB_ALLOW_PRIVATE_URLS", "127.0.0.0/8,::1/128")
POSTGRES_URL = os.environ.get("SYNCHUB_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Simulator:
    """`python -m tests.simulators ...` in its own process, so it never shares our GIL."""

    def __init__(self, *args, latency=0.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.simulators", *args, "--port", str(self.port), "--latency", str(latency)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(self.url + "/", timeout=1)
                return
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("simulator did not start")
                time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class ThrowawayDatabase:
    def __init__(self, backend, workdir):
        self.backend = backend
        if backend == "sqlite":
            self.url = f"sqlite:///{os.path.join(workdir, f'bench-{uuid.uuid4().hex[:6]}.db')}"
            self.name = None
        else:
            self.name = f"synchub_bench_{uuid.uuid4().hex[:8]}"
            self._admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
            with self._admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
            self.url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + self.name

    def drop(self):
        if self.name:
            with self._admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            self._admin.dispose()


def max_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
