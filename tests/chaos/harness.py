"""The whole stack as separate OS processes, as deployed: gunicorn (web), RQ workers,
supervisors, a private redis-server, the records simulator; one throwaway PostgreSQL
database, on the shared server or (own_cluster=True) on a throwaway cluster of its own that
restart_database() really stops and starts. A keeper thread restarts workers and the web
server when they exit, as systemd's Restart=always would; supervisors are restarted by the
scenarios themselves. With hosts=True the workers and the web server run on network hosts of
their own (tests/chaos/netns.py) that the partition scenarios cut off."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import redis as redis_lib
import requests
import sqlalchemy as sa

from tests.support import ROOT, TEST_KEY, Database, RedisServer, cleanup_dir, free_port, kill_session, wait_for

from .netns import Network
from .pgcluster import PostgresCluster

# Short thresholds so a fault is noticed and repaired in seconds (the brief's numbers).
TIMING = {
    "SYNCHUB_HEARTBEAT_SECONDS": "0.3",
    "SYNCHUB_STALE_AFTER_SECONDS": "3",
    "SYNCHUB_SUPERVISOR_TICK_SECONDS": "0.3",
    "SYNCHUB_SWEEP_INTERVAL_SECONDS": "0.5",
    "SYNCHUB_LEADER_TTL_SECONDS": "2",
    "SYNCHUB_LOST_JOB_GRACE_SECONDS": "1",
    "SYNCHUB_RUN_MAX_ATTEMPTS": "5",
    # Pauses between attempts really happen (waiting, then queued by a supervisor), in seconds.
    "SYNCHUB_RUN_RETRY_BASE_SECONDS": "0.5",
    "SYNCHUB_RUN_RETRY_MAX_SECONDS": "2",
    "SYNCHUB_HTTP_BACKOFF_BASE_SECONDS": "0.1",
    "SYNCHUB_HTTP_BACKOFF_MAX_SECONDS": "1",
    "SYNCHUB_HTTP_MAX_RETRIES": "6",
    "SYNCHUB_HTTP_MAX_RETRY_AFTER_SECONDS": "5",
    "SYNCHUB_ALERT_INTERVAL_SECONDS": "3600",
    "SYNCHUB_RETENTION_INTERVAL_SECONDS": "3600",
    # Outbox: leases, backoff and the breaker play out in a second or two; the leader drains every second.
    "SYNCHUB_OUTBOX_DRAIN_INTERVAL_SECONDS": "1",
    "SYNCHUB_OUTBOX_LEASE_SECONDS": "2",
    "SYNCHUB_OUTBOX_BACKOFF_BASE_SECONDS": "0.1",
    "SYNCHUB_OUTBOX_BACKOFF_MAX_SECONDS": "0.4",
    "SYNCHUB_OUTBOX_BREAKER_COOLDOWN_SECONDS": "0.3",
    "SYNCHUB_OUTBOX_BREAKER_MAX_COOLDOWN_SECONDS": "1",
    "SYNCHUB_OUTBOX_DRAIN_BUDGET_SECONDS": "5",
    "SYNCHUB_OUTBOX_HTTP_TIMEOUT_SECONDS": "5",
    "SYNCHUB_OUTBOX_MAX_ATTEMPTS": "30",
}
STALE_AFTER = float(TIMING["SYNCHUB_STALE_AFTER_SECONDS"])
# On the network hosts' stack: a server or worker gone silent is given up on within 2 s, shorter
# than the partitions (1.5-2.5 x STALE_AFTER), so the partition scenarios exercise that bound.
HOSTS_TIMING = {"SYNCHUB_DB_NETWORK_TIMEOUT_SECONDS": "2"}
ACTIVE = ("waiting", "queued", "running")


HOSTS = ["w1", "w2", "web"]  # worker-1 on w1, worker-2 on w2, gunicorn on web


def hosts_parts(net=None):
    """The network hosts and a throwaway cluster listening on their bridge: {"net", "cluster"}
    (made ahead by the runner while another stack runs). Nothing is left behind on failure."""
    net = net or Network(HOSTS).create()
    try:
        cluster = PostgresCluster(listen=("127.0.0.1", net.gateway), trusted_network=str(net.subnet)).start()
    except BaseException:
        net.destroy()
        raise
    return {"net": net, "cluster": cluster}


class Proc:
    """One child process in its own session, its output in a log file."""

    def __init__(self, name, args, env, logdir):
        self.name, self.args, self.env = name, args, env
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.proc = None
        self.starts = 0

    def start(self):
        log = open(self.log_path, "ab")
        args = self.args(self.starts) if callable(self.args) else self.args
        self.proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        self.starts += 1
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL, wait=30):
        """SIGKILL: the whole session (RQ's work horse included), like a dead machine.
        Other signals go to the main process only, as `kill <pid>` or systemd would send them."""
        if not self.alive():
            return
        if sig == signal.SIGKILL:
            kill_session(self.proc.pid, sig)
        else:
            os.kill(self.proc.pid, sig)
        self.proc.wait(timeout=wait)

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


class ClusterDatabase:
    """The stack's database on its own throwaway cluster (the same face as tests.support.Database)."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.name = "synchub_chaos"
        self.admin_url = "postgresql+psycopg://" + cluster.url.removeprefix("postgresql://")
        self.url = self.admin_url.rsplit("/", 1)[0] + "/" + self.name
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
        engine.dispose()

    def drop(self):
        pass  # the whole cluster is destroyed with the stack


class Stack:
    def __init__(self, records=300, sim_latency=0.05, sim_rate="20/1", client_rate=(10, 1), workers=2,
                 supervisors=2, own_cluster=False, cluster=None, hosts=False, net=None):
        """own_cluster: on a throwaway cluster (`cluster`, started already, or one made in
        start()); the stack owns it from here on and destroys it in stop().
        hosts: the workers and the web server each on a network host of their own
        (tests/chaos/netns.py), reaching the stack's own cluster, Redis and simulators over
        the hosts' bridge; implies own_cluster (the machine's servers listen on loopback only).
        `net` and `cluster` may come made already (hosts_parts()); the stack owns them from here on."""
        self.hosts = hosts or net is not None
        self.net = net
        self.service_host = "127.0.0.1"  # where PostgreSQL, Redis and the simulators listen
        self.web_host = "127.0.0.1"
        self.worker_hosts = {}  # worker proc name -> network host
        self.own_cluster = own_cluster or cluster is not None or hosts
        self.cluster = cluster
        if not self.own_cluster and not os.environ.get("SYNCHUB_TEST_POSTGRES_URL"):
            raise RuntimeError("SYNCHUB_TEST_POSTGRES_URL is unset: the chaos suite runs against PostgreSQL "
                               "(database restart, concurrent triggers); set it to a server you may create "
                               "databases on, e.g. postgresql://postgres@127.0.0.1:5432/test")
        self.workdir = tempfile.mkdtemp(prefix="synchub-chaos-", dir="/tmp")
        self.n_workers, self.n_supervisors = workers, supervisors
        self.records, self.sim_latency, self.sim_rate, self.client_rate = records, sim_latency, sim_rate, client_rate
        self.db = None
        self.redis_server = None
        self.procs = {}
        self._keeper = None
        self._stop = threading.Event()
        self.keeper_paused = threading.Event()
        self.clock_offset = 0.0  # seconds the supervisors' clock is ahead of real time

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, connections=lambda stack: []):
        """`connections(stack)` lists the connections to create (they may need the simulator's URL).
        A stack that fails to come up is stopped: its processes must not outlive the run."""
        try:
            return self._start(connections)
        except BaseException:
            self.stop()
            raise

    def _start(self, connections):
        if self.hosts:
            if self.net is None or self.cluster is None:
                parts = hosts_parts(self.net)
                self.net, self.cluster = parts["net"], parts["cluster"]
            self.service_host, self.web_host = self.net.gateway, self.net.address("web")
            self.db = ClusterDatabase(self.cluster)
        elif self.own_cluster:
            self.cluster = self.cluster or PostgresCluster().start()
            self.db = ClusterDatabase(self.cluster)
        else:
            self.db = Database("postgresql", self.workdir)
        self.redis_server = RedisServer(host=self.service_host).start()
        self.clock_file = os.path.join(self.workdir, "clock")
        self.set_clock("+0")
        self.web_port, self.sim_port, self.loops_port = free_port(), free_port(), free_port()
        self.env = dict(os.environ)
        self.env.update(TIMING)
        self.env.update({
            "DATABASE_URL": self.db.url, "REDIS_URL": self.redis_server.url, "SYNCHUB_ENCRYPTION_KEYS": TEST_KEY,
            "SYNCHUB_INSTANCE_PATH": self.workdir, "SECRET_KEY": "chaos-" + uuid.uuid4().hex,
            "SYNCHUB_LOG_LEVEL": "WARNING", "PYTHONPATH": ROOT, "SYNCHUB_CRON_SECRET": "chaos-cron",
        })
        if self.net:  # the connections' URLs name the simulators on the bridge
            self.env["SYNCHUB_ALLOW_PRIVATE_URLS"] = f"{self.env.get('SYNCHUB_ALLOW_PRIVATE_URLS', '')},{self.net.subnet}"
            self.env.update(HOSTS_TIMING)
        seeded = subprocess.run([sys.executable, "-m", "tests.chaos.seed"], cwd=ROOT, env=self.env, check=True,
                                capture_output=True, text=True,
                                input=json.dumps({"token": True, "connections": connections(self)}))
        self.token = seeded.stdout.strip().splitlines()[-1]
        self.engine = sa.create_engine(self.db.url, pool_pre_ping=True, pool_size=3)
        self.redis = redis_lib.Redis.from_url(self.redis_server.url)
        self._add("sim", [sys.executable, "-m", "tests.chaos.sim", "--port", str(self.sim_port), "--host", self.service_host,
                          "--records", str(self.records), "--rate-limit", self.sim_rate, "--latency", str(self.sim_latency),
                          "--state-file", os.path.join(self.workdir, "sim-state.json")])
        self._add("loops", [sys.executable, "-m", "tests.chaos.loops_sim", "--host", self.service_host,
                            "--port", str(self.loops_port)])
        self._add("web", self._on_host("web", [
            sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--threads", "32", "--workers", "2",
            "--bind", f"{self.web_host}:{self.web_port}", "wsgi:app"]))
        for i in range(1, self.n_workers + 1):
            # A fresh name per start, like the default host.pid: RQ refuses a name whose
            # registration is still live (up to 420 s after a SIGKILL; see worker_restart_same_name).
            host = f"w{(i - 1) % 2 + 1}"
            if self.net:
                self.worker_hosts[f"worker-{i}"] = host
            self._add(f"worker-{i}", lambda starts, i=i, host=host: self._on_host(host, [
                sys.executable, "-m", "worker", "--name", f"chaos-worker-{i}.{starts}"]))
        for i in range(1, self.n_supervisors + 1):
            self._add(f"supervisor-{i}", [sys.executable, "-m", "scheduler", "--name", f"chaos-supervisor-{i}",
                                          "--clock-file", self.clock_file])
        for proc in self.procs.values():
            proc.start()
        wait_for(self._web_ready, timeout=60, interval=0.2, message="gunicorn answering /healthz")
        wait_for(self._sim_ready, timeout=30, interval=0.1, message="the records simulator")
        wait_for(lambda: self._answers(f"{self.loops_url}/_simulator/stats"), timeout=30, interval=0.1,
                 message="the Loops simulator")
        self._keeper = threading.Thread(target=self._keep, daemon=True)
        self._keeper.start()
        return self

    def stop(self):
        self._stop.set()
        if self.net:
            self.net.heal_all()  # so nothing hangs on the way down
        for proc in self.procs.values():
            try:
                proc.kill(signal.SIGKILL)
            except Exception:
                pass
        if self.redis_server:
            self.redis_server.stop()
        if getattr(self, "engine", None):
            self.engine.dispose()
        try:
            if self.db:
                self.db.drop()
        finally:
            if self.cluster:
                self.cluster.destroy()
            if self.net:
                self.net.destroy()
            cleanup_dir(self.workdir)

    def _on_host(self, host, args):
        """`args` run on that network host when the stack has hosts, else here."""
        return self.net.run_in(host, args) if self.net else args

    def _add(self, name, args):
        self.procs[name] = Proc(name, args, self.env, self.workdir)

    def _keep(self):
        while not self._stop.wait(0.3):
            if self.keeper_paused.is_set():
                continue
            for name, proc in self.procs.items():
                if (name.startswith("worker") or name == "web") and not proc.alive():
                    proc.start()

    def _web_ready(self):
        try:
            return requests.get(f"{self.web_url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def _sim_ready(self):
        return self._answers(f"{self.sim_url}/_chaos/stats")

    @staticmethod
    def _answers(url):
        try:
            return requests.get(url, timeout=1).ok
        except requests.RequestException:
            return False

    # -- addresses and helpers -------------------------------------------------------------

    @property
    def web_url(self):
        return f"http://{self.web_host}:{self.web_port}"

    @property
    def sim_url(self):
        return f"http://{self.service_host}:{self.sim_port}"

    @property
    def loops_url(self):
        return f"http://{self.service_host}:{self.loops_port}"

    def loops(self, method, path, **kwargs):
        response = requests.request(method, f"{self.loops_url}{path}", timeout=10, **kwargs)
        response.raise_for_status()
        return response.json()

    def set_clock(self, text):
        tmp = self.clock_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.clock_file)

    def restart_sim(self, down_seconds):
        self.procs["sim"].kill(signal.SIGKILL)
        time.sleep(down_seconds)
        self.procs["sim"].start()
        wait_for(self._sim_ready, timeout=30, interval=0.05, message="the records simulator back")

    def restart_redis(self, down_seconds):
        self.redis_server.stop()
        time.sleep(down_seconds)
        self.redis_server.start()  # same port, empty: every RQ job and lease is gone

    def restart_database(self, down_seconds):
        """The real fault: a fast shutdown of the stack's own cluster (open transactions rolled
        back, clients disconnected, a shutdown checkpoint), down for `down_seconds`, started again
        on the same port. Returns the seconds it was down (stop begun to accepting connections)."""
        stopped = time.monotonic()
        self.cluster.stop_server("fast")
        time.sleep(down_seconds)
        self.cluster.start_server()
        self.cluster.restarts += 1
        return time.monotonic() - stopped

    def terminate_db_connections(self):
        """The fallback "database restart" fault where no cluster of our own can be made (the
        shared server must not be restarted): every backend connection to our database is
        terminated, which is what a restart does to the clients, but the server stays up."""
        admin = sa.create_engine(self.db.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            killed = conn.execute(sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": self.db.name}).scalar()
        admin.dispose()
        return killed

    def sim(self, method, path, **kwargs):
        response = requests.request(method, f"{self.sim_url}{path}", timeout=10, **kwargs)
        response.raise_for_status()
        return response.json()

    def api(self, method, path, **kwargs):
        return requests.request(method, f"{self.web_url}/api{path}", timeout=30,
                                headers={"Authorization": f"Bearer {self.token}"}, **kwargs)

    def query(self, sql, **params):
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).mappings().all()

    def worker_named(self, rq_name):
        for name, proc in self.procs.items():
            if name.startswith("worker") and rq_name and rq_name.startswith(f"chaos-{name}."):
                return proc
        return None
