"""Per-process resource samples every few seconds during a soak, and their growth as slopes.

Roles: web-master (gunicorn's arbiter), web-workers (its two worker processes, summed),
worker-1/2 (the RQ workers' main processes; the work horse forked per job is transient and
not counted), supervisor-1/2, redis (the private redis-server), harness (this process: its
own pool is part of what PostgreSQL sees). A role whose process is restarted by a fault
starts a new segment; the slope is fitted within segments (one intercept per segment), so a
restart's drop or its warm-up is not mistaken for growth or shrinkage.

Database connections per role: PostgreSQL's pg_stat_activity for the stack's database
gives the client ports; /proc/net/tcp{,6} gives the local port of every socket inode, and
/proc/<pid>/fd which inodes a process holds, so each backend is counted for the process
that opened it. Redis keys: DBSIZE (the server is private to the stack) and the keys
without an expiry (SCAN + TTL): RQ keeps finished jobs for up to an hour (result_ttl
3600 in webapp/queue.py), so the total climbs for the first hour by design; keys that
never expire are what could grow without bound."""
import os
import threading
import time

import sqlalchemy as sa

ROLES_ORDER = ("web-master", "web-workers", "worker-1", "worker-2", "supervisor-1", "supervisor-2", "redis",
               "harness")
METRICS = ("rss_kb", "fds", "db_conns", "redis_keys", "redis_persistent_keys")
UNITS = {"rss_kb": "KB/min", "fds": "fds/min", "db_conns": "conns/min", "redis_keys": "keys/min",
         "redis_persistent_keys": "keys/min"}


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def socket_inodes(pid):
    """(number of open fds, set of socket inodes) of a process."""
    inodes, count = set(), 0
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None, set()
    for name in names:
        count += 1
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return count, inodes


def tcp_local_ports(remote_port):
    """{socket inode: local port} for TCP sockets whose remote port is `remote_port`."""
    found = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, remote, inode = fields[1], fields[2], fields[9]
                    if int(remote.rsplit(":", 1)[1], 16) == remote_port:
                        found[inode] = int(local.rsplit(":", 1)[1], 16)
        except OSError:
            continue
    return found


def role_pids(stack):
    """{role: (pid, ...)} of the processes alive now."""
    roles = {}
    web = stack.procs.get("web")
    if web and web.alive():
        roles["web-master"] = (web.proc.pid,)
        roles["web-workers"] = tuple(sorted(children(web.proc.pid)))
    for name, proc in stack.procs.items():
        if (name.startswith("worker-") or name.startswith("supervisor-")) and proc.alive():
            roles[name] = (proc.proc.pid,)
    if stack.redis_server and stack.redis_server.proc and stack.redis_server.proc.poll() is None:
        roles["redis"] = (stack.redis_server.proc.pid,)
    roles["harness"] = (os.getpid(),)
    return roles


class ProcessSampler:
    """A thread taking one sample of every role every `interval` seconds."""

    def __init__(self, stack, interval=10.0):
        self.stack = stack
        self.interval = interval
        self.samples = []  # {"t": seconds since start, "role": .., "pids": .., metrics...}
        self.pg_port = sa.engine.make_url(stack.db.url).port or 5432
        self.admin = sa.create_engine(stack.db.admin_url, isolation_level="AUTOCOMMIT", pool_size=1,
                                      pool_pre_ping=True)
        self.started = None
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="soak-sampler")

    def start(self):
        self.started = time.monotonic()
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=60)
        self.admin.dispose()

    def _loop(self):
        while True:
            try:
                self.sample()
            except Exception:
                self.errors += 1
            if self._stop.wait(self.interval):
                return

    def _pg_client_ports(self):
        try:
            with self.admin.connect() as conn:
                rows = conn.execute(sa.text("SELECT client_port FROM pg_stat_activity WHERE datname = :db"),
                                    {"db": self.stack.db.name}).all()
            return {r[0] for r in rows if r[0] is not None}
        except Exception:
            return None  # the database-restart fault: no sample of connections this time

    def _redis_keys(self):
        try:
            client = self.stack.redis
            total = client.dbsize()
            persistent = 0
            batch = []
            for key in client.scan_iter(count=1000):
                batch.append(key)
                if len(batch) == 500:
                    persistent += self._count_persistent(client, batch)
                    batch = []
            persistent += self._count_persistent(client, batch)
            return total, persistent
        except Exception:
            return None, None  # the Redis-restart fault

    @staticmethod
    def _count_persistent(client, keys):
        if not keys:
            return 0
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.ttl(key)
        return sum(1 for ttl in pipe.execute() if ttl == -1)

    def sample(self):
        t = time.monotonic() - self.started
        ports = self._pg_client_ports()
        inode_port = tcp_local_ports(self.pg_port) if ports is not None else {}
        keys, persistent = self._redis_keys()
        for role, pids in role_pids(self.stack).items():
            rss, fds, conns = 0, 0, 0
            for pid in pids:
                value = rss_kb(pid)
                count, inodes = socket_inodes(pid)
                if value is None or count is None:
                    rss = None
                    break
                rss += value
                fds += count
                conns += sum(1 for i in inodes if inode_port.get(i) in (ports or ()))
            if rss is None:
                continue
            row = {"t": round(t, 1), "role": role, "pids": list(pids), "rss_kb": rss, "fds": fds,
                   "db_conns": conns if ports is not None else None}
            if role == "redis":
                row.update(redis_keys=keys, redis_persistent_keys=persistent)
            self.samples.append(row)
        if ports is not None:
            self.samples.append({"t": round(t, 1), "role": "(all, pg_stat_activity)", "pids": [],
                                 "db_conns": len(ports)})


def within_segment_slope(points):
    """Least squares slope per minute of [(t seconds, value, segment)], one intercept per segment."""
    by_segment = {}
    for t, value, segment in points:
        by_segment.setdefault(segment, []).append((t / 60.0, value))
    num = den = 0.0
    n = 0
    for pts in by_segment.values():
        if len(pts) < 3:
            continue
        mt = sum(p[0] for p in pts) / len(pts)
        mv = sum(p[1] for p in pts) / len(pts)
        num += sum((p[0] - mt) * (p[1] - mv) for p in pts)
        den += sum((p[0] - mt) ** 2 for p in pts)
        n += len(pts)
    return (num / den if den else None), n


def slopes(samples, warmup_seconds):
    """{role: {metric: slope per minute, "n": points, "restarts": n, "first"/"last": values}}.
    Samples in the first `warmup_seconds` of each segment (the stack's start, or a process
    restarted by a fault: imports, pools and caches filling) are left out."""
    by_role = {}
    for s in samples:
        by_role.setdefault(s["role"], []).append(s)
    result = {}
    for role, rows in by_role.items():
        segment_start = {}
        kept = []
        for s in rows:
            segment = tuple(s["pids"])
            segment_start.setdefault(segment, s["t"])
            if s["t"] - segment_start[segment] >= warmup_seconds:
                kept.append((s, segment))
        entry = {"restarts": max(0, len(segment_start) - 1), "n": len(kept)}
        for metric in METRICS:
            points = [(s["t"], s[metric], seg) for s, seg in kept if s.get(metric) is not None]
            if points:
                entry[metric], _ = within_segment_slope(points)
                values = [p[1] for p in points]
                entry[metric + "_range"] = (min(values), max(values))
                fifth = max(1, len(values) // 5)
                entry[metric + "_last"] = sum(values[-fifth:]) / fifth
                entry[metric + "_rise"] = entry[metric + "_last"] - sum(values[:fifth]) / fifth
        result[role] = entry
    return result


# Growth beyond these (per minute, after warm-up) is flagged as unbounded: over an hour
# 1 MB/min would be 60 MB more per process; 0.5 fd/min, 30 descriptors; 0.2
# connections/min, 12 connections (the pools hold a fixed number); 2 never-expiring Redis
# keys/min, 120 keys. Bounded use wobbles around a level, far below all of them. Redis's
# memory holds the finished jobs RQ keeps for an hour (result_ttl 3600, webapp/queue.py),
# so it grows by design until the first of them expire: its bound is 4 MB/min, and its
# keys that never expire are the check that matters.
THRESHOLDS = {"rss_kb": 1024.0, "fds": 0.5, "db_conns": 0.2, "redis_persistent_keys": 2.0}
ROLE_THRESHOLDS = {"redis": {"rss_kb": 4096.0}}
# A slope is only growth when the level also moved by at least this much (mean of the last
# fifth of the samples minus the first fifth): a 3-minute window's slope of a value that
# wobbles between 16 and 18 descriptors is noise, not a leak; a leak per request is far more.
MIN_RISE = {"rss_kb": 10240, "fds": 5, "db_conns": 3, "redis_persistent_keys": 20}


def _kind(role):
    """worker-1 and worker-2 are processes of one kind; web-master is its own."""
    name, _, number = role.rpartition("-")
    return name if number.isdigit() else role


def _back_to_its_kinds_level(result, role, metric):
    """A process restarted by a fault fills its pools and connections as jobs reach it, which
    can take longer than the warm-up (a worker that runs jobs in its own process opens a
    connection for each thread a job uses). Climbing back to no more than what a process of
    its kind that was not restarted holds is that refill, not growth: a leak would show in
    that other process too."""
    entry = result[role]
    last = entry.get(metric + "_last")
    if not entry.get("restarts") or last is None:
        return False
    steady = [other.get(metric + "_range", (None, None))[1] for name, other in result.items()
              if name != role and _kind(name) == _kind(role) and not other.get("restarts")]
    steady = [level for level in steady if level is not None]
    return bool(steady) and last <= max(steady)


def flags(result, thresholds=THRESHOLDS):
    found = []
    for role, entry in result.items():
        for metric, limit in dict(thresholds, **ROLE_THRESHOLDS.get(role, {})).items():
            value = entry.get(metric)
            rise = entry.get(metric + "_rise") or 0
            if (value is not None and value > limit and rise >= MIN_RISE[metric]
                    and not _back_to_its_kinds_level(result, role, metric)):
                found.append(f"{role}: {metric} grows {value:.2f} {UNITS[metric]} (bound {limit} {UNITS[metric]}), "
                             f"level up {rise:.0f}")
    return found


def slopes_table(result):
    lines = ["| process (role) | restarts | samples | RSS KB/min (range MB) | fds/min (range) | "
             "DB conns/min (range) | Redis keys/min (range) | keys without expiry/min (range) |",
             "|---|---:|---:|---|---|---|---|---|"]

    def cell(entry, metric, scale=1.0, digits=2):
        if entry.get(metric) is None:
            return "-"
        low, high = entry[metric + "_range"]
        fmt = f"{{:.{digits}f}}"
        rng = (f"{low / scale:.0f}-{high / scale:.0f}" if scale != 1.0 else f"{low}-{high}")
        return f"{fmt.format(entry[metric])} ({rng})"
    order = [r for r in ROLES_ORDER if r in result] + sorted(r for r in result if r not in ROLES_ORDER)
    for role in order:
        e = result[role]
        lines.append(f"| {role} | {e['restarts']} | {e['n']} | {cell(e, 'rss_kb', 1024.0, 1)} | {cell(e, 'fds')} | "
                     f"{cell(e, 'db_conns')} | {cell(e, 'redis_keys', digits=1)} | "
                     f"{cell(e, 'redis_persistent_keys')} |")
    return "\n".join(lines)
