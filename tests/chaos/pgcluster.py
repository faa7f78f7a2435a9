"""A throwaway PostgreSQL cluster (initdb + pg_ctl) that the database_restart scenario may
stop and start for real: the shared server at SYNCHUB_TEST_POSTGRES_URL is other people's.

Debian keeps the binaries in /usr/lib/postgresql/<version>/bin, off PATH. initdb and the
postmaster refuse to run as root, so under root they run as the `postgres` OS user in a
directory chowned to it. Settings are the server's defaults (fsync on, full_page_writes on):
a fast shutdown must keep every committed transaction, which is what the scenario checks."""
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile

from tests.support import free_port

OS_USER = "postgres"


def find_bindir():
    """The newest installed server's bin directory, or None."""
    candidates = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        version = os.path.basename(os.path.dirname(os.path.dirname(initdb)))
        candidates.append((int(version) if version.isdigit() else 0, os.path.dirname(initdb)))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append((-1, os.path.dirname(on_path)))
    for _, bindir in sorted(candidates, reverse=True):
        if all(os.access(os.path.join(bindir, tool), os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def unavailable_reason():
    """None when a throwaway cluster can be made here, else why not (for the scenario's note)."""
    if find_bindir() is None:
        return "no initdb/pg_ctl/postgres found (looked in /usr/lib/postgresql/*/bin and PATH)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            return f"running as root and there is no {OS_USER!r} OS user for initdb to run as"
    return None


class PostgresCluster:
    def __init__(self, listen=("127.0.0.1",), trusted_network=None):
        """listen: the addresses it listens on (clients are given the last); trusted_network:
        a CIDR besides loopback allowed in without a password (the partition hosts' subnet)."""
        self.listen, self.trusted_network = tuple(listen), trusted_network
        self.bindir = find_bindir()
        if self.bindir is None:
            raise RuntimeError(unavailable_reason())
        self.dir = None
        self.port = None
        self.running = False
        self.restarts = 0

    @property
    def datadir(self):
        return os.path.join(self.dir, "data")

    @property
    def log_path(self):
        return os.path.join(self.dir, "server.log")

    @property
    def url(self):
        return f"postgresql://postgres@{self.listen[-1]}:{self.port}/postgres"

    def _run(self, *args, timeout=60):
        kwargs = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam(OS_USER)
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        # Its own session: a Ctrl-C to the chaos run must not reach the postmaster before
        # destroy() shuts it down and deletes its directory.
        done = subprocess.run([os.path.join(self.bindir, args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=timeout, cwd=self.dir, start_new_session=True, **kwargs)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-600:]}"
                               + self._log_tail())
        return done

    def _log_tail(self):
        try:
            with open(self.log_path) as f:
                return "\n--- server log ---\n" + "".join(f.readlines()[-15:])
        except OSError:
            return ""

    def start(self):
        """initdb and start; a cluster that fails to come up is destroyed."""
        try:
            self.dir = tempfile.mkdtemp(prefix="synchub-chaos-pg-", dir="/tmp")
            if os.geteuid() == 0:
                user = pwd.getpwnam(OS_USER)
                os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._run("initdb", "-D", self.datadir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C")
            if self.trusted_network:
                with open(os.path.join(self.datadir, "pg_hba.conf"), "a") as f:
                    f.write(f"host all all {self.trusted_network} trust\n")
            self.port = free_port()
            self.start_server()
            return self
        except BaseException:
            self.destroy()
            raise

    def start_server(self):
        options = (f"-p {self.port} -c listen_addresses={','.join(self.listen)} -k {self.dir} -c fsync=on "
                   "-c synchronous_commit=on -c max_connections=200")
        self._run("pg_ctl", "start", "-D", self.datadir, "-l", self.log_path, "-w", "-t", "60", "-o", options)
        self.running = True

    def stop_server(self, mode="fast"):
        """fast: roll back open transactions, disconnect clients, checkpoint, exit cleanly."""
        self._run("pg_ctl", "stop", "-D", self.datadir, "-m", mode, "-w", "-t", "60")
        self.running = False

    def destroy(self):
        """Always safe: stops a running server (immediate: nothing left to keep) and deletes the directory."""
        pidfile = os.path.join(self.dir, "data", "postmaster.pid") if self.dir else None
        if pidfile and os.path.exists(pidfile):
            try:
                self._run("pg_ctl", "stop", "-D", self.datadir, "-m", "immediate", "-w", "-t", "30")
            except Exception:
                # Not even an immediate stop: kill the postmaster, so no server outlives its directory.
                try:
                    with open(pidfile) as f:
                        os.kill(int(f.readline()), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
        self.running = False
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
