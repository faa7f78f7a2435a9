"""Real `python -m scheduler` processes for the supervisor's acceptance tests."""
import os
import signal
import subprocess
import sys
import uuid

import pytest

from tests.support import ROOT, process_env


class SupervisorProcess:
    """A real supervisor process in its own process group (SIGKILL takes all of it)."""

    def __init__(self, app, name=None, clock_file=None, **settings):
        self.app = app
        self.name = name or f"test-supervisor-{uuid.uuid4().hex[:6]}"
        self.clock_file = clock_file
        self.settings = settings
        self.log_path = os.path.join(app.instance_path, f"{self.name}.log")
        self.proc = None

    def start(self):
        args = [sys.executable, "-m", "scheduler", "--name", self.name]
        if self.clock_file:
            args += ["--clock-file", self.clock_file]
        env = process_env(self.app, SYNCHUB_LOG_LEVEL="INFO", **{f"SYNCHUB_{k}": v for k, v in self.settings.items()})
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout):
        return self.proc.wait(timeout=timeout)

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


def kill_like_a_dead_machine(worker):
    """SIGKILL a WorkerProcess *and* its RQ work horse. The horse calls os.setpgrp(), so
    killing the worker's process group alone leaves it running (and heartbeating)."""
    horses = _children(worker.proc.pid)
    worker.kill(signal.SIGKILL)
    for pid in horses:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _children(parent_pid):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # the name may contain spaces
        except OSError:
            continue
        if int(fields[1]) == parent_pid:
            found.append(int(entry))
    return found


@pytest.fixture
def supervisors(app):
    """supervisors.start(name=, clock_file=, **SETTINGS) -> SupervisorProcess; all killed at teardown."""
    started = []

    class Supervisors:
        def start(self, **kwargs):
            process = SupervisorProcess(app, **kwargs).start()
            started.append(process)
            return process

    yield Supervisors()
    for process in started:
        process.kill()
        if process.proc:
            process.proc.wait(timeout=30)

