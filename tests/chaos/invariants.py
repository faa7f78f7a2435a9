"""The promises (docs/RELIABILITY.md) checked after every scenario, against the database and the
simulator's own records. Each check returns a list of violations (empty: kept)."""
import threading
from collections import Counter

from .scenarios import SETTLE_TIMEOUT, wait_terminal


class ActiveRunSampler:
    """Samples, every 50 ms during a scenario, whether any connection has two active sync
    runs (record runs from webhooks may run beside one), or one record two queued runs.
    It also notes the simulators' rate-limit counts at the start, to compare at the end."""

    def __init__(self, stack):
        self.stack = stack
        self.rate_before = rate_violations(stack)
        self.samples = 0
        self.doubles = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _loop(self):
        while not self._stop.wait(0.05):
            try:
                rows = self.stack.query(
                    "SELECT connection_id, count(*) AS n FROM runs WHERE status IN ('queued', 'running') "
                    "AND mode <> 'record' GROUP BY connection_id HAVING count(*) > 1 "
                    "UNION ALL SELECT connection_id, count(*) AS n FROM runs WHERE status = 'waiting' "
                    "AND not_before IS NULL AND mode <> 'record' GROUP BY connection_id, params_key HAVING count(*) > 1 "
                    "UNION ALL SELECT connection_id, count(*) AS n FROM runs WHERE status = 'queued' "
                    "AND mode = 'record' GROUP BY connection_id, record_key HAVING count(*) > 1")
            except Exception:  # the database-restart fault drops this connection too
                continue
            self.samples += 1
            self.doubles += [dict(r) for r in rows]


def all_runs_terminal(stack):
    active = [r["id"] for r in stack.query("SELECT id FROM runs WHERE status IN ('waiting', 'queued', 'running')")]
    if wait_terminal(stack, active):
        return []
    stuck = stack.query("SELECT id, status, attempt FROM runs WHERE status IN ('waiting', 'queued', 'running')")
    return [f"runs still active {SETTLE_TIMEOUT:.0f}s after the fault: {[dict(r) for r in stuck]}"]


def records_match_provider(stack, api_run):
    """After a completed full sync, the live records are exactly the provider's records."""
    if api_run is None:
        return []
    if stack.query("SELECT status FROM runs WHERE id = :id", id=api_run)[0]["status"] != "completed":
        return []  # reported by the scenario; nothing to compare against
    truth = {str(r["id"]): r for r in stack.sim("GET", "/_chaos/items")}
    rows = stack.query("SELECT r.external_id, r.data FROM records r JOIN connections c ON c.id = r.connection_id "
                       "WHERE c.name = 'api' AND r.deleted_at IS NULL")
    ours = {r["external_id"]: r["data"] for r in rows}
    violations = []
    missing, extra = truth.keys() - ours.keys(), ours.keys() - truth.keys()
    if missing:
        violations.append(f"{len(missing)} provider records missing, e.g. {sorted(missing)[:3]}")
    if extra:
        violations.append(f"{len(extra)} records the provider no longer has, e.g. {sorted(extra)[:3]}")
    stale = [k for k in truth.keys() & ours.keys() if truth[k] != ours[k]]
    if stale:
        violations.append(f"{len(stale)} records differ from the provider, e.g. {stale[:3]}")
    return violations


def rate_violations(stack):
    """The simulators' own counts of requests they had to refuse for exceeding their limit."""
    return {"records": stack.sim("GET", "/_chaos/stats")["violations"],
            "Loops": stack.loops("GET", "/_simulator/stats")["violations"]}


def rate_limit_kept(stack, before):
    found = []
    for name, count in rate_violations(stack).items():
        # A restarted simulator (provider outage) counts from zero again.
        new = count - before[name] if count >= before[name] else count
        if new:
            found.append(f"the {name} simulator saw its rate limit exceeded {new} times")
    return found


def slots_once(stack):
    rows = stack.query("SELECT connection_id, requested_by FROM runs WHERE trigger = 'schedule'")
    counts = Counter((r["connection_id"], r["requested_by"]) for r in rows)
    return [f"slot enqueued {n} times: {key}" for key, n in counts.items() if n > 1]


def check_all(stack, sampler, result):
    violations = list(result.get("violations", []))
    violations += all_runs_terminal(stack)
    violations += [f"two active runs at once: {d}" for d in sampler.doubles[:3]]
    violations += records_match_provider(stack, result.get("api_run"))
    violations += rate_limit_kept(stack, sampler.rate_before)
    violations += slots_once(stack)
    return violations

