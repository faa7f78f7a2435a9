"""The fault scenarios and the invariants checked after each (docs/RELIABILITY.md).

Each scenario takes the running Stack and a seeded random.Random (the timing of its
faults), injects its faults, and returns {"faults": n, "recover": seconds}. The runner
checks the invariants afterwards; a scenario's own expectations (the run it disturbed
completed, not failed) go into its "violations" list."""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import requests

from scheduler.leader import holder, leader_key
from tests.support import wait_for
from tests.webapp.webhooks.signing import standard_headers, whsec

from .harness import ACTIVE, STALE_AFTER, Proc
from .pgcluster import unavailable_reason

WEBHOOK_SECRET = whsec()
SETTLE_TIMEOUT = STALE_AFTER * 5 + 30  # stale threshold, a few retries with backoff, and slack
API_STREAM = {"path": "/items", "records_key": "items", "pagination": {"type": "page", "page_size": 20}}


def connections(stack):
    """The connections every scenario uses."""
    sandbox = [{"name": name, "connector": "sandbox", "settings": {"records": 200, "page_size": 20, "latency_ms": 80}}
               for name in ("sb1", "sb2")]
    return [
        {"name": "api", "connector": "rest", "settings": {
            "base_url": stack.sim_url, "rate_limit": list(stack.client_rate), "streams": {"items": API_STREAM}}},
        {"name": "sched", "connector": "sandbox", "schedule": "every:1", "settings": {"records": 30, "page_size": 10}},
        {"name": "hooks", "connector": "sandbox", "settings": {"records": 1000,
                                                               "allowed_triggers": ["manual", "webhook", "api"]},
         "credentials": {"webhook_secret": WEBHOOK_SECRET}},
        *sandbox,
        {"name": "loops", "connector": "loops", "credentials": {"api_key": "loops-test-key"}, "settings": {
            "base_url": stack.loops_url + "/api", "mappings": {"score_changed": [
                {"action": "upsert_contact", "email": "{email}", "properties": {"score": "{score}"}}]}}},
    ]


# -- helpers ---------------------------------------------------------------------------


def wait_dispatched(stack, before, violations):
    """Until no delivery after id `before` is still "received": the request only stores, a
    worker's dispatch job (or the supervisor's) creates the runs."""
    def dispatched():
        rows = stack.query("SELECT count(*) AS n FROM webhook_deliveries WHERE id > :m AND outcome = 'received'",
                           m=before)
        return rows[0]["n"] == 0
    try:
        wait_for(dispatched, timeout=SETTLE_TIMEOUT, interval=0.1, message="deliveries dispatched")
    except AssertionError:
        violations.append("webhook deliveries still 'received' (not dispatched) after the settle time")


def batched_record_runs(stack, deliveries, events, violations):
    """The record runs of webhook deliveries ({provider event id: item index} in `events`),
    checked: record runs come in batches (webapp/record_batches.py), so each delivery has
    one run and each record is in exactly one entry of those runs, naming that delivery.
    Returns the run ids; what is wrong goes into `violations`."""
    run_ids = sorted({i for d in deliveries for i in (d["run_ids"] or [])})
    if any(len(d["run_ids"] or []) != 1 for d in deliveries):
        violations.append(f"deliveries with other than one record run: {[d['run_ids'] for d in deliveries]}")
    entries = {}
    for row in stack.query("SELECT id, params FROM runs WHERE id = ANY(:ids)", ids=run_ids):
        params = json.loads(row["params"]) if isinstance(row["params"], str) else row["params"]
        for _stream, record_id, _deleted, delivery_ids in params.get("records", []):
            entries.setdefault(record_id, []).append((row["id"], set(delivery_ids)))
    for d in deliveries:
        record_id = f"item-{events[d['provider_event_id']]:07d}"
        found = entries.get(record_id, [])
        if len(found) != 1 or (d["run_ids"] or [None])[0] != found[0][0] or d["id"] not in found[0][1]:
            violations.append(f"delivery {d['provider_event_id']}: record {record_id} in runs {found}, "
                              f"delivery's runs {d['run_ids']}")
    if sorted(entries) != sorted(f"item-{i:07d}" for i in set(events.values())):
        violations.append(f"records {sorted(entries)} in the runs for {len(set(events.values()))} distinct records")
    return run_ids


def trigger(stack, name):
    response = stack.api("POST", f"/connections/{name}/runs", json={"mode": "full"})
    assert response.status_code in (200, 201), response.text
    return response.json()["run"]["id"]


def run_row(stack, run_id):
    rows = stack.query("SELECT * FROM runs WHERE id = :id", id=run_id)
    return rows[0] if rows else None


def wait_mid_sync(stack, run_id, rng):
    """Until the run is running and has stored a random number of records (mid-page)."""
    threshold = rng.randint(20, 160)

    def mid():
        row = run_row(stack, run_id)
        return row["status"] == "running" and row["processed"] >= threshold
    # Generous: under the soak's load (tests/soak) a sync may queue behind minutes of other work.
    wait_for(mid, timeout=180, interval=0.02, message=f"run {run_id} running past {threshold} records")
    return run_row(stack, run_id)


def wait_terminal(stack, run_ids, timeout=SETTLE_TIMEOUT):
    def done():
        rows = [run_row(stack, i) for i in run_ids]
        return all(r["status"] not in ACTIVE for r in rows)
    try:
        wait_for(done, timeout=timeout, interval=0.1, message=f"runs {run_ids} terminal")
    except AssertionError:
        return False
    return True


def expect_completed(stack, run_ids, violations):
    for run_id in run_ids:
        row = run_row(stack, run_id)
        if row["status"] != "completed":
            violations.append(f"run {run_id} ended {row['status']} ({row['error_class']}: {row['error_message']})")


def mutate_provider(stack, rng):
    """Change, delete and add a few provider records so each sync has real work to do."""
    items = stack.sim("GET", "/_chaos/items")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    changed = [dict(r, name=f"{r['name']} v{uuid.uuid4().hex[:4]}", updated_at=stamp)
               for r in rng.sample(items, rng.randint(1, 10))]
    added = [{"id": f"chaos-{uuid.uuid4().hex[:8]}", "name": "added", "updated_at": stamp}
             for _ in range(rng.randint(0, 5))]
    deleted = [r["id"] for r in rng.sample(items, rng.randint(0, 5)) if r not in changed]
    deleted = [i for i in deleted if i not in {c["id"] for c in changed}]
    stack.sim("POST", "/_chaos/mutate", json={"upsert": changed + added, "delete": deleted})


def _api_sync_with_fault(stack, rng, inject):
    """Mutate the provider, start a full sync of "api" over HTTP, inject a fault mid-page."""
    mutate_provider(stack, rng)
    run_id = trigger(stack, "api")
    wait_mid_sync(stack, run_id, rng)
    started = time.monotonic()
    faults = inject(run_id)
    violations = []
    if wait_terminal(stack, [run_id]):
        expect_completed(stack, [run_id], violations)
    return {"faults": faults, "recover": time.monotonic() - started, "violations": violations, "api_run": run_id}


# -- scenarios -------------------------------------------------------------------------


def worker_sigkill(stack, rng):
    def inject(run_id):
        worker = stack.worker_named(run_row(stack, run_id)["worker_name"])
        worker.kill(signal.SIGKILL)  # the whole session: worker and work horse
        return 1
    return _api_sync_with_fault(stack, rng, inject)


def follow_up_worker_sigkill(stack, rng):
    """A sync with other parameters is asked for while a full sync runs: it waits as a
    follow-up (an identical request coalesces into it); then the full sync's worker is
    SIGKILLed. The sweep resumes the full sync, the follow-up starts only after it ends:
    both complete, in order, each exactly once, the records exactly the provider's."""
    mutate_provider(stack, rng)
    active = trigger(stack, "api")
    wait_mid_sync(stack, active, rng)
    violations = []
    asked = [stack.api("POST", "/connections/api/runs", json={"mode": "incremental"}) for _ in range(2)]
    answers = [(a.status_code, a.json().get("outcome"), a.json()["run"]["id"], a.json()["run"]["status"]) for a in asked]
    follow = answers[0][2]
    if [(code, outcome) for code, outcome, _, _ in answers] != [(201, "follow_up"), (200, "coalesced")] \
            or answers[1][2] != follow or answers[0][3] != "waiting":
        violations.append(f"the follow-up was not one waiting run: {answers}")
    stack.worker_named(run_row(stack, active)["worker_name"]).kill(signal.SIGKILL)
    started = time.monotonic()
    if wait_terminal(stack, [active, follow]):
        expect_completed(stack, [active, follow], violations)
        first, second = run_row(stack, active), run_row(stack, follow)
        if second["started_at"] is not None and first["finished_at"] is not None \
                and second["started_at"] < first["finished_at"]:
            violations.append(f"follow-up {follow} started at {second['started_at']}, before run {active} "
                              f"ended at {first['finished_at']}")
        if second["attempt"] != 1:
            violations.append(f"follow-up {follow} took {second['attempt']} attempts; it never met a fault")
    count = stack.query("SELECT count(*) AS n FROM runs r JOIN connections c ON c.id = r.connection_id "
                        "WHERE c.name = 'api' AND r.id > :id", id=active)[0]["n"]
    if count != 1:
        violations.append(f"{count} runs were made after run {active}; one follow-up expected")
    return {"faults": 1, "recover": time.monotonic() - started, "violations": violations, "api_run": follow}


def worker_sigterm(stack, rng):
    def inject(run_id):
        worker = stack.worker_named(run_row(stack, run_id)["worker_name"])
        stack.keeper_paused.set()  # a deploy: the old worker drains before the new one starts
        try:
            worker.kill(signal.SIGTERM, wait=60)
        finally:
            stack.keeper_paused.clear()
        return 1
    return _api_sync_with_fault(stack, rng, inject)


def worker_restart_same_name(stack, rng):
    """docs/DEPLOY.md runs each worker as `python -m worker --name %H.%i`: after a SIGKILL
    (OOM killer, power loss with Redis on another machine) systemd restarts it under the
    same name. That worker must come up and work."""
    name = rng.choice([n for n in stack.procs if n.startswith("worker")])
    worker = stack.procs[name]
    current_name = lambda: worker.args(worker.starts - 1)[-1]  # noqa: E731 (the keeper's restarts count up)
    # Up and registered first, as any worker that has been up for a moment is; waited for with
    # the keeper still on, since an earlier scenario may have just killed this worker and only
    # the keeper starts it again (paused first, the wait could only time out: seen in CI).
    wait_for(lambda: worker.alive() and stack.redis.exists(f"rq:worker:{current_name()}"), timeout=30,
             message=f"{name} up and registered")
    stack.keeper_paused.set()
    violations = []
    try:
        rq_name = current_name()
        worker.kill(signal.SIGKILL)
        time.sleep(rng.uniform(0.2, 1.0))  # systemd's RestartSec
        killed = time.monotonic()
        again = Proc(f"{name}-same-name", [sys.executable, "-m", "worker", "--name", rq_name], stack.env,
                     stack.workdir).start()
        try:
            again.proc.wait(timeout=5)
            violations.append(f"a worker restarted under its name {rq_name!r} after a SIGKILL exited with "
                              f"{again.proc.returncode}: {again.output().strip().splitlines()[-1][:160]}")
        except subprocess.TimeoutExpired:
            pass  # still up: it registered
        recover = time.monotonic() - killed
        again.kill(signal.SIGTERM)
    finally:
        stack.keeper_paused.clear()
    run_id = trigger(stack, "sb1")
    if wait_terminal(stack, [run_id]):
        expect_completed(stack, [run_id], violations)
    return {"faults": 1, "recover": recover, "violations": violations}


def supervisor_sigkill(stack, rng):
    leader = wait_for(lambda: holder(stack.redis, leader_key("synchub")), timeout=15, message="a leading supervisor")
    name = leader.removeprefix("chaos-")
    time.sleep(rng.uniform(0, 1.0))  # anywhere in its tick
    killed_at = time.monotonic()
    stack.procs[name].kill(signal.SIGKILL)
    violations = []
    try:
        wait_for(lambda: holder(stack.redis, leader_key("synchub")) not in (None, leader), timeout=15, interval=0.02,
                 message="another supervisor leading")
    except AssertionError as exc:
        violations.append(str(exc))
    recover = time.monotonic() - killed_at
    stack.procs[name].start()
    # The new leader keeps the job table healthy: a sync started now still completes.
    run_id = trigger(stack, "sb1")
    if wait_terminal(stack, [run_id]):
        expect_completed(stack, [run_id], violations)
    return {"faults": 1, "recover": recover, "violations": violations}


def redis_restart(stack, rng):
    mutate_provider(stack, rng)
    run_ids = [trigger(stack, name) for name in ("api", "sb1", "sb2")]
    time.sleep(rng.uniform(0.1, 1.0))
    stack.restart_redis(rng.uniform(0.3, 2.0))
    restarted = time.monotonic()
    violations = []
    if wait_terminal(stack, run_ids):
        expect_completed(stack, run_ids, violations)
    else:
        violations.append(f"runs not terminal {SETTLE_TIMEOUT:.0f}s after Redis came back")
    return {"faults": 1, "recover": time.monotonic() - restarted, "violations": violations, "api_run": run_ids[0]}


REAL_RESTART = "real restart: pg_ctl stop -m fast, 1-3 s down, pg_ctl start (own throwaway cluster)"


def database_restart(stack, rng):
    """A real restart of the stack's own PostgreSQL cluster mid-sync, while webhooks arrive
    and outbox events are published and delivered: the sync completes, every accepted webhook
    and event is processed once, and nothing committed before the shutdown is lost. Without a
    cluster of its own (no initdb here) it falls back to terminating every connection, and
    its note says the server was not restarted."""
    if stack.cluster is None:
        result = _terminate_connections(stack, rng)
        result["note"] = (f"SERVER NOT RESTARTED ({unavailable_reason() or 'the stack has no cluster of its own'}): "
                          "every backend connection terminated instead")
        return result
    mutate_provider(stack, rng)
    run_id = trigger(stack, "api")
    traffic = Traffic(stack, random.Random(rng.randrange(2**32))).start()
    violations = []
    try:
        wait_mid_sync(stack, run_id, rng)
        committed = committed_rows(stack)
        started = time.monotonic()
        down = stack.restart_database(rng.uniform(1.0, 3.0))
        time.sleep(rng.uniform(0.3, 1.0))  # traffic goes on against the restarted server
    finally:
        violations += traffic.stop()
    if wait_terminal(stack, [run_id]):
        expect_completed(stack, [run_id], violations)
    recover = time.monotonic() - started
    violations += traffic.check()
    lost = {table: sorted(ids - now)[:5] for table, ids in committed.items()
            for now in [committed_rows(stack, table)[table]] if ids - now}
    if lost:
        violations.append(f"rows committed before the restart are gone: {lost}")
    # How the sync got going again: its worker requeued it, or (the worker could not write while
    # the server was down) the supervisor's sweep found its heartbeat stale.
    events = stack.query("SELECT message FROM run_events WHERE run_id = :id", id=run_id)
    requeued = sum(e["message"].startswith("attempt ") and "will resume" in e["message"] for e in events)
    swept = sum(e["message"].startswith("worker lost") for e in events)
    return {"faults": 1, "recover": recover, "violations": violations, "api_run": run_id, "note": REAL_RESTART,
            "detail": f"down {down:.1f} s; sync requeued by its worker {requeued}x, swept as lost {swept}x; "
                      f"{traffic.summary()}"}


def _terminate_connections(stack, rng):
    def inject(run_id):
        times = rng.randint(1, 3)
        for _ in range(times):
            stack.terminate_db_connections()
            time.sleep(rng.uniform(0.1, 0.6))
        return times
    return _api_sync_with_fault(stack, rng, inject)


DURABLE_TABLES = ("runs", "run_events", "records", "webhook_deliveries", "outbox_events")


def committed_rows(stack, *tables):
    """{table: ids}: what a fast shutdown must keep (none of these tables deletes rows on its own
    in seconds: records are soft-deleted, retention runs hourly here)."""
    return {table: {r["id"] for r in stack.query(f"SELECT id FROM {table}")} for table in tables or DURABLE_TABLES}


class Traffic:
    """Signed webhooks and outbox events sent one after the other from a thread while the
    database goes down and comes back. Each is retried until accepted (200 / 202), as a
    provider retries a webhook and a publishing service an event; only accepted ones are
    promised, and each of those must be processed exactly once, outbox effects in order."""

    RETRY_FOR = 30  # seconds a refused request is retried before that is a violation

    def __init__(self, stack, rng):
        self.stack, self.rng = stack, rng
        tag = uuid.uuid4().hex[:6]
        self.emails = [f"r{tag}-{k}@example.com" for k in range(rng.randint(2, 4))]
        self.tag = tag
        self.indices = rng.sample(range(1000), 300)  # distinct records: one run per event
        self.webhooks = {}  # accepted webhook-id -> record index
        self.effects = {email: [] for email in self.emails}  # accepted events' effects, in publish order
        self.refused = 0
        self.violations = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=self.RETRY_FOR * 2 + 30)
        if self._thread.is_alive():
            self.violations.append("the traffic thread did not finish")
        return self.violations

    def summary(self):
        return (f"{len(self.webhooks)} webhooks and {sum(map(len, self.effects.values()))} outbox events accepted, "
                f"{self.refused} refused and retried")

    def _loop(self):
        n = 0
        while not self._stop.is_set() and n < len(self.indices):
            index = self.indices[n]
            msg_id = f"msg_{self.tag}_{n}"
            body = json.dumps({"type": "item.updated", "data": {"id": f"item-{index:07d}"}}).encode()
            if self._until_accepted(200, lambda: requests.post(
                    f"{self.stack.web_url}/webhooks/hooks", data=body, timeout=10,
                    headers=standard_headers(body, WEBHOOK_SECRET, msg_id=msg_id))):
                self.webhooks[msg_id] = index
            email = self.emails[n % len(self.emails)]
            key = f"{self.tag}-{n}"
            event = {"type": "score_changed", "key": email, "payload": {"email": email, "score": n},
                     "idempotency_key": key, "connection": "loops"}
            if self._until_accepted(202, lambda: self.stack.api("POST", "/outbox", json=event)):
                self.effects[email].append(f"{key}.0")
            else:
                return  # a later event of this contact would be out of order behind the lost one
            n += 1
            time.sleep(self.rng.uniform(0.02, 0.15))

    def _until_accepted(self, status, send):
        deadline = time.monotonic() + self.RETRY_FOR
        while True:
            try:
                answer = send()
                if answer.status_code == status:
                    return True
                if answer.status_code < 500 and answer.status_code != 429:
                    self.violations.append(f"{answer.request.url} answered {answer.status_code}: {answer.text[:200]}")
                    return False
            except requests.RequestException:
                pass
            self.refused += 1
            if time.monotonic() > deadline:
                self.violations.append(f"a request was refused for {self.RETRY_FOR} s around the database restart")
                return False
            time.sleep(0.1)

    def check(self):
        """After the restart: every accepted webhook stored once and its record run completed
        with the provider's data; every accepted event delivered once, in order per contact."""
        from webapp.connectors.sandbox import SandboxConnector

        stack, violations = self.stack, []
        ids = list(self.webhooks)

        def dispatched():
            rows = stack.query("SELECT provider_event_id, outcome, run_ids FROM webhook_deliveries "
                               "WHERE provider_event_id LIKE :p", p=f"msg_{self.tag}_%")
            return (rows,) if all(r["outcome"] != "received" for r in rows) and len(rows) >= len(ids) else None
        try:
            rows, = wait_for(dispatched, timeout=SETTLE_TIMEOUT, interval=0.2, message="webhook deliveries dispatched")
        except AssertionError as exc:
            rows = stack.query("SELECT provider_event_id, outcome, run_ids FROM webhook_deliveries "
                               "WHERE provider_event_id LIKE :p", p=f"msg_{self.tag}_%")
            violations.append(f"{exc}: {sum(r['outcome'] == 'received' for r in rows)} still received")
        stored = {r["provider_event_id"]: r for r in rows}
        missing = [i for i in ids if i not in stored]
        if missing:
            violations.append(f"{len(missing)} accepted webhooks not stored (lost in the restart), e.g. {missing[:3]}")
        run_ids = [i for r in rows for i in (r["run_ids"] or [])]
        if wait_terminal(stack, run_ids):
            expect_completed(stack, run_ids, violations)
        truth = SandboxConnector({"records": 1000}, {}, None)
        for msg_id, index in self.webhooks.items():
            if msg_id not in stored:
                continue
            if len(stored[msg_id]["run_ids"] or []) != 1:
                violations.append(f"webhook {msg_id}: record runs {stored[msg_id]['run_ids']} (one expected)")
            data = stack.query("SELECT r.data FROM records r JOIN connections c ON c.id = r.connection_id "
                               "WHERE c.name = 'hooks' AND r.external_id = :e", e=f"item-{index:07d}")
            if len(data) != 1 or data[0]["data"] != truth._record(index):
                violations.append(f"webhook {msg_id}: record item-{index:07d} is {data!r}")

        keys = [k for effects in self.effects.values() for k in effects]  # one row per mapped action

        def delivered():
            rows = stack.query("SELECT idempotency_key, status FROM outbox_events WHERE idempotency_key LIKE :p",
                               p=f"{self.tag}-%")
            done = {r["idempotency_key"] for r in rows if r["status"] in ("done", "dead")}
            return set(keys) <= done
        try:
            wait_for(delivered, timeout=SETTLE_TIMEOUT, interval=0.2, message=f"{len(keys)} outbox events delivered")
        except AssertionError as exc:
            violations.append(f"{exc}; {outbox_machinery(stack)}")
        rows = stack.query("SELECT idempotency_key, status FROM outbox_events WHERE idempotency_key LIKE :p",
                           p=f"{self.tag}-%")
        states = {r["idempotency_key"]: r["status"] for r in rows}
        lost = [k for k in keys if k not in states]
        if lost:
            violations.append(f"{len(lost)} accepted outbox events not stored (lost in the restart), e.g. {lost[:3]}")
        dead = [k for k in keys if states.get(k) == "dead"]
        if dead:
            violations.append(f"{len(dead)} outbox events dead, e.g. {dead[:3]}")
        sequences = stack.loops("GET", "/_chaos/sequences")
        for email, expected in self.effects.items():
            if (sequences.get(email) or []) != expected:
                violations.append(f"{email}: effects {sequences.get(email)} != published {expected}")
        duplicates = [d for d in stack.loops("GET", "/_chaos/duplicates") if d[0] in self.effects]
        if duplicates:
            violations.append(f"effects applied twice: {duplicates[:5]}")
        return violations


def provider_outage(stack, rng):
    def inject(run_id):
        stack.restart_sim(rng.uniform(0.5, 2.5))
        return 1
    return _api_sync_with_fault(stack, rng, inject)


def provider_429_storm(stack, rng):
    def inject(run_id):
        stack.sim("POST", "/_chaos/fault", json={"status": 429, "times": rng.randint(3, 12), "retry_after": 1})
        return 1
    return _api_sync_with_fault(stack, rng, inject)


def failed_sync_deletes_nothing(stack, rng):
    """The provider deletes records, then rejects our credentials mid-sync: the failed full
    sync must soft-delete nothing. Once it accepts them again, the next sync applies the
    deletions."""
    if not stack.query("SELECT 1 FROM runs r JOIN connections c ON c.id = r.connection_id "
                       "WHERE c.name = 'api' AND r.status = 'completed'"):
        wait_terminal(stack, [trigger(stack, "api")])  # something to lose
    items = stack.sim("GET", "/_chaos/items")
    gone = [r["id"] for r in rng.sample(items, rng.randint(1, 5))]
    stack.sim("POST", "/_chaos/mutate", json={"delete": gone})
    live = "SELECT r.external_id FROM records r JOIN connections c ON c.id = r.connection_id " \
           "WHERE c.name = 'api' AND r.deleted_at IS NULL"
    before = {r["external_id"] for r in stack.query(live)}
    run_id = trigger(stack, "api")
    wait_mid_sync(stack, run_id, rng)
    stack.sim("POST", "/_chaos/fault", json={"status": 401, "times": 10_000})
    violations = []
    wait_terminal(stack, [run_id])
    status = run_row(stack, run_id)["status"]
    if status != "failed":
        violations.append(f"run {run_id} ended {status} although the provider refused every request")
    # Pages stored before the failure stay (upserts); no record may be deleted by a failed run.
    deleted = before - {r["external_id"] for r in stack.query(live)}
    if deleted:
        violations.append(f"a failed full sync deleted {len(deleted)} records, e.g. {sorted(deleted)[:3]}")
    stack.sim("POST", "/_chaos/fault", json={"clear": True})
    started = time.monotonic()
    retry = trigger(stack, "api")
    if wait_terminal(stack, [retry]):
        expect_completed(stack, [retry], violations)
    return {"faults": 1, "recover": time.monotonic() - started, "violations": violations, "api_run": retry}


def concurrent_sync_now(stack, rng):
    """100 Sync-now requests at once over HTTP: one run is created, all 100 get it."""
    wait_terminal(stack, [r["id"] for r in stack.query("SELECT id FROM runs WHERE status IN ('waiting','queued','running')")])
    mutate_provider(stack, rng)
    barrier = threading.Barrier(100)
    started = time.monotonic()

    def one(_):
        barrier.wait()
        time.sleep(rng.uniform(0, 0.01))
        response = requests.post(f"{stack.web_url}/api/connections/api/runs", json={"mode": "full"}, timeout=60,
                                 headers={"Authorization": f"Bearer {stack.token}"})
        return response.status_code, response.json().get("run", {}).get("id")
    with ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(one, range(100)))
    violations = [f"a trigger answered {a[0]}" for a in answers if a[0] not in (200, 201)]
    created = sorted(a[1] for a in answers if a[0] == 201)
    run_ids = sorted({a[1] for a in answers if a[1]})
    if not created or set(run_ids) - set(created):
        violations.append(f"100 triggers: created {created}, answered with runs {run_ids}")
    # On a loaded machine the first run can finish while requests are still arriving; a
    # second run is then right, but only once the first one has ended.
    wait_terminal(stack, run_ids)
    rows = [run_row(stack, i) for i in created]
    for earlier, later in zip(rows, rows[1:]):
        if earlier["finished_at"] is None or later["created_at"] < earlier["finished_at"]:
            violations.append(f"run {later['id']} created at {later['created_at']} while run {earlier['id']} "
                              f"was active (finished {earlier['finished_at']})")
    expect_completed(stack, run_ids, violations)
    return {"faults": 100, "recover": time.monotonic() - started, "violations": violations,
            "api_run": run_ids[-1] if run_ids else None}


def duplicate_webhooks(stack, rng):
    """Distinct events, each sent 2 to 4 times at once, then replayed later: one delivery
    per event, its record in exactly one record run (runs come in batches); the copies are
    counted as duplicates."""
    from webapp.connectors.sandbox import SandboxConnector

    before = stack.query("SELECT coalesce(max(id), 0) AS m FROM webhook_deliveries")[0]["m"]
    # Distinct records: two events for one record may share its queued run (by design),
    # which would blur "one run per event".
    events = {f"msg_{uuid.uuid4().hex[:12]}": index for index in rng.sample(range(1000), rng.randint(5, 12))}
    sends = []
    for msg_id, index in events.items():
        body = json.dumps({"type": "item.updated", "data": {"id": f"item-{index:07d}"}}).encode()
        sends += [(msg_id, body)] * rng.randint(2, 4)
    rng.shuffle(sends)

    def send(item):
        msg_id, body = item
        return requests.post(f"{stack.web_url}/webhooks/hooks", data=body, timeout=30,
                             headers=standard_headers(body, WEBHOOK_SECRET, msg_id=msg_id)).status_code
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(send, sends))
    violations = [f"webhook answered {s}" for s in statuses if s != 200]

    wait_dispatched(stack, before, violations)
    deliveries = stack.query("SELECT * FROM webhook_deliveries WHERE id > :m", m=before)
    run_ids = [i for d in deliveries for i in (d["run_ids"] or [])]
    wait_terminal(stack, run_ids)
    # Replays of the same messages, later: all duplicates.
    replayed = [send((msg_id, json.dumps({"type": "item.updated", "data": {"id": f"item-{i:07d}"}}).encode()))
                for msg_id, i in list(events.items())[: rng.randint(1, len(events))]]
    violations += [f"replay answered {s}" for s in replayed if s != 200]
    deliveries = stack.query("SELECT * FROM webhook_deliveries WHERE id > :m", m=before)
    if sorted(d["provider_event_id"] for d in deliveries) != sorted(events):
        violations.append(f"{len(deliveries)} deliveries stored for {len(events)} distinct events")
    duplicates = sum(d["duplicates"] for d in deliveries)
    if duplicates != len(sends) - len(events) + len(replayed):
        violations.append(f"{duplicates} duplicates counted, {len(sends) - len(events) + len(replayed)} sent")
    run_ids = batched_record_runs(stack, deliveries, events, violations)
    if wait_terminal(stack, run_ids):
        expect_completed(stack, run_ids, violations)
    truth = SandboxConnector({"records": 1000}, {}, None)
    for index in set(events.values()):
        rows = stack.query("SELECT r.data FROM records r JOIN connections c ON c.id = r.connection_id "
                           "WHERE c.name = 'hooks' AND r.external_id = :e", e=f"item-{index:07d}")
        if len(rows) != 1 or rows[0]["data"] != truth._record(index):
            violations.append(f"record item-{index:07d}: {rows!r}")
    return {"faults": len(sends) - len(events) + len(replayed), "recover": time.monotonic() - started,
            "violations": violations}


def clock_jump(stack, rng):
    """Jump the supervisors' business clock forward while a sync runs (missed slots must
    coalesce into one run, the running sync must still complete), then back to real time
    (no slot fires twice). Each trial ends with the clock back at real time."""
    mutate_provider(stack, rng)
    run_id = trigger(stack, "api")
    wait_mid_sync(stack, run_id, rng)
    latest = stack.query("SELECT coalesce(max(id), 0) AS m FROM runs")[0]["m"]
    # Past the slot a previous trial's jump left pending, so a slot is due on the jumped clock.
    pending = stack.query("SELECT next_run_at FROM connections WHERE name = 'sched'")[0]["next_run_at"]
    ahead = max(0, (pending - datetime.utcnow()).total_seconds()) if pending else 0
    forward = int(ahead) + rng.randint(120, 1800)
    stack.clock_offset = forward
    stack.set_clock(f"+{forward}")
    started = time.monotonic()
    violations = []

    def fired():
        return stack.query("SELECT r.id FROM runs r JOIN connections c ON c.id = r.connection_id "
                           "WHERE c.name = 'sched' AND r.trigger = 'schedule' AND r.id > :m", m=latest)
    try:
        wait_for(fired, timeout=15, interval=0.05, message=f"the scheduled slot after a +{forward}s clock jump")
    except AssertionError as exc:
        violations.append(str(exc))
    if len(fired()) > 1:
        violations.append(f"{len(fired())} scheduled runs after one forward jump (missed slots must coalesce)")
    if wait_terminal(stack, [run_id]):
        expect_completed(stack, [run_id], violations)
    # Its worker was healthy throughout: declaring it lost is a false stale verdict.
    lost = stack.query("SELECT message FROM run_events WHERE run_id = :id AND message LIKE 'worker lost%'", id=run_id)
    if lost:
        violations.append(f"run {run_id} on a healthy worker was swept as stale {len(lost)} times after the "
                          f"supervisor's clock jumped +{forward}s: {lost[0]['message']}")
    recover = time.monotonic() - started
    stack.clock_offset = 0
    stack.set_clock("+0")  # the backward jump
    time.sleep(1.5)  # several ticks on the earlier clock
    wait_terminal(stack, [r["id"] for r in fired()])
    return {"faults": 2, "recover": recover, "violations": violations, "api_run": run_id}


def outbox_delivery(stack, rng):
    """Events published over HTTP while a worker is SIGKILLed and Loops answers 503 for a
    while: every event delivered, no effect twice, each contact's effects in publish order."""
    trial = uuid.uuid4().hex[:6]
    keys, per_key = rng.randint(3, 6), rng.randint(4, 10)
    emails = [f"c{trial}-{k}@example.com" for k in range(keys)]
    expected = {email: [] for email in emails}
    events = []
    for n in range(keys * per_key):
        email = emails[n % keys]
        events.append({"type": "score_changed", "key": email, "payload": {"email": email, "score": n // keys},
                       "idempotency_key": f"{trial}-{n}", "connection": "loops"})
        expected[email].append(f"{trial}-{n}.0")
    batches = [events[i:i + 10] for i in range(0, len(events), 10)]
    violations = []
    for i, batch in enumerate(batches):
        response = stack.api("POST", "/outbox", json={"events": batch})
        if response.status_code != 202:
            violations.append(f"publish answered {response.status_code}: {response.text[:200]}")
        if i == 0:
            time.sleep(rng.uniform(0.1, 0.6))
            worker = stack.procs[rng.choice([n for n in stack.procs if n.startswith("worker")])]
            worker.kill(signal.SIGKILL)
            stack.loops("POST", "/_chaos/outage", json={"status": 503})
            outage = rng.uniform(0.5, 2.0)
    time.sleep(outage)
    stack.loops("POST", "/_chaos/outage", json={"status": None})
    started = time.monotonic()
    ids = [f"{trial}-{n}" for n in range(len(events))]

    def delivered():
        rows = stack.query("SELECT status, count(*) AS n FROM outbox_events WHERE idempotency_key LIKE :p "
                           "GROUP BY status", p=f"{trial}-%")
        counts = {r["status"]: r["n"] for r in rows}
        return counts.get("done", 0) == len(ids) or counts.get("dead", 0) > 0
    stalled = False
    try:
        wait_for(delivered, timeout=SETTLE_TIMEOUT, interval=0.2, message=f"{len(ids)} outbox events delivered")
    except AssertionError as exc:
        stalled = True
        stuck = stack.query("SELECT status, attempts, next_attempt_at, lease_until, claimed_by, last_error, "
                            "now() at time zone 'utc' AS db_now FROM outbox_events WHERE idempotency_key LIKE :p "
                            "AND status <> 'done' ORDER BY id LIMIT 2", p=f"{trial}-%")
        violations.append(f"{exc}; e.g. {[dict(r) for r in stuck]}; {outbox_machinery(stack)}")
    recover = time.monotonic() - started
    dead = stack.query("SELECT count(*) AS n FROM outbox_events WHERE idempotency_key LIKE :p AND status = 'dead'",
                       p=f"{trial}-%")[0]["n"]
    if dead:
        violations.append(f"{dead} outbox events dead")
    sequences = stack.loops("GET", "/_chaos/sequences")
    for email, sequence in expected.items():
        got = sequences.get(email) or []
        # A stalled delivery (reported above) leaves a prefix; anything else is out of order.
        if got != (sequence[:len(got)] if stalled else sequence):
            violations.append(f"{email}: effects {got} != published {sequence}")
    duplicates = [d for d in stack.loops("GET", "/_chaos/duplicates") if d[0] in expected]
    if duplicates:
        violations.append(f"effects applied twice: {duplicates[:5]}")
    return {"faults": 2, "recover": recover, "violations": violations}


def outbox_machinery(stack):
    """What could be carrying the outbox on, for a stall's report: drain jobs and their
    workers, announced drains, breaker state and probe locks."""
    from rq import Queue, Worker
    from rq.job import Job

    now = time.time()
    live = {w.name for w in Worker.all(connection=stack.redis)}
    jobs = []
    for name in ("high", "default"):
        q = Queue(f"synchub:{name}", connection=stack.redis)  # webapp.queue.queue_name, default prefix
        ids = list(q.get_job_ids()) + list(q.started_job_registry.get_job_ids())
        for job in Job.fetch_many(ids, connection=stack.redis):
            if job is not None and job.func_name in ("worker.jobs.send_due_outbox_events", "worker.jobs.send_outbox_event"):
                jobs.append(f"{job.id[:40]} {job.func_name.rsplit('.', 1)[-1]} {job.get_status(refresh=False)} "
                            f"worker={job.worker_name} alive={job.worker_name in live if job.worker_name else None}")
    draining = [(m.decode(), round(s - now, 1)) for m, s in
                stack.redis.zrange("synchub:outbox:sending", 0, -1, withscores=True)]
    breakers = {k.decode(): {f.decode(): v.decode() for f, v in stack.redis.hgetall(k).items()}
                for k in stack.redis.keys("synchub:outbox:breaker:*") if stack.redis.type(k) == b"hash"}
    probes = {k.decode(): stack.redis.pttl(k) for k in stack.redis.keys("synchub:outbox:breaker:*:probe")}
    kicks = {k: stack.redis.pttl(k) for k in ("synchub:outbox:send-job", "synchub:outbox:drain-job")}
    return (f"now={now:.1f} jobs={jobs} draining={draining} breakers={breakers} probes={probes} "
            f"kicks(pttl ms)={kicks}")


# -- partitions: packets dropped between a network host and the services (tests/chaos/netns.py) --


def _log_size(proc):
    try:
        return os.path.getsize(proc.log_path)
    except OSError:
        return 0


def _log_since(proc, offset):
    with open(proc.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _partitioned_sync(stack, rng, ports_of):
    """Mutate the provider, start the `api` sync, and once it is mid-page cut the host of the
    worker running it off (`ports_of(stack)`: None for everything, else those ports) for 1.5-2.5
    times the stale threshold. Returns what the scenario needs to judge the aftermath."""
    mutate_provider(stack, rng)
    run_id = trigger(stack, "api")
    row = wait_mid_sync(stack, run_id, rng)
    proc_name = next(name for name, proc in stack.procs.items() if proc is stack.worker_named(row["worker_name"]))
    host, proc = stack.worker_hosts[proc_name], stack.procs[proc_name]
    offset = _log_size(proc)
    hold = rng.uniform(1.5, 2.5) * STALE_AFTER
    stack.net.partition(host, ports_of(stack))
    started = time.monotonic()
    swept_during = False
    try:
        deadline = started + hold
        while time.monotonic() < deadline:
            swept_during = swept_during or run_row(stack, run_id)["attempt"] > row["attempt"]
            time.sleep(0.1)
        # Who waits on what at the end of the cut, for a report of a sweep that did not happen.
        sessions = stack.query("SELECT application_name, client_addr::text AS client, state, wait_event_type, "
                               "left(query, 60) AS query FROM pg_stat_activity WHERE datname = current_database() "
                               "AND state <> 'idle' AND pid <> pg_backend_pid()")
    finally:
        stack.net.heal(host)
    return {"run_id": run_id, "attempt": row["attempt"], "worker": row["worker_name"], "host": host, "proc": proc,
            "offset": offset, "started": started, "hold": hold, "swept_during": swept_during,
            "sessions": [dict(r) for r in sessions]}


def _completed_by(stack, run_id):
    row = run_row(stack, run_id)
    return row, next((h for n, h in stack.worker_hosts.items() if stack.procs[n] is stack.worker_named(row["worker_name"])),
                     None)


def worker_host_partition(stack, rng):
    """The worker host running the `api` sync is cut off from PostgreSQL and Redis (every
    packet dropped, both ways) mid-page for 1.5-2.5 x the stale threshold, then healed. The
    sweep must find its heartbeat stale and resume the run on the other host, where it
    completes; the zombie, hearing back after the heal, must write nothing: its conditional
    updates fail and it stops (its log says so)."""
    cut = _partitioned_sync(stack, rng, lambda stack: None)
    run_id, attempt, violations = cut["run_id"], cut["attempt"], []
    if not cut["swept_during"]:
        violations.append(f"run {run_id} was not swept while its worker host was cut off for {cut['hold']:.1f} s; "
                          f"busy sessions at the end of the cut: {cut['sessions']}")
    if wait_terminal(stack, [run_id]):
        expect_completed(stack, [run_id], violations)
    recover = time.monotonic() - cut["started"]
    row, host = _completed_by(stack, run_id)
    if row["attempt"] <= attempt:
        violations.append(f"run {run_id} ended in attempt {row['attempt']}, the zombie's; it was never resumed")
    stopped = f"run {run_id} attempt {attempt}: stopped"
    try:
        wait_for(lambda: stopped in _log_since(cut["proc"], cut["offset"]), timeout=SETTLE_TIMEOUT, interval=0.2,
                 message="the zombie's log saying it stopped")
    except AssertionError:
        violations.append(f"the zombie (worker {cut['worker']}, attempt {attempt}) never logged that it stopped; "
                          f"its log since the cut: {_log_since(cut['proc'], cut['offset'])[-600:]!r}")
    return {"faults": 1, "recover": recover, "violations": violations, "api_run": run_id,
            "note": "completed on the other host" if host != cut["host"] else "completed on the healed host",
            "detail": f"cut {cut['hold']:.1f} s; attempt {attempt} -> {row['attempt']}"}


def worker_redis_partition(stack, rng):
    """A partial partition: the worker host running the `api` sync still reaches PostgreSQL
    but not Redis (packets to and from Redis's port dropped) for 1.5-2.5 x the stale
    threshold, then healed. The run completes once, wherever; the invariants hold."""
    cut = _partitioned_sync(stack, rng, lambda stack: [stack.redis_server.port])
    run_id, violations = cut["run_id"], []
    if wait_terminal(stack, [run_id]):
        expect_completed(stack, [run_id], violations)
    recover = time.monotonic() - cut["started"]
    row, host = _completed_by(stack, run_id)
    where = "same host" if host == cut["host"] else "other host"
    return {"faults": 1, "recover": recover, "violations": violations, "api_run": run_id,
            "note": f"completed in attempt {'1' if row['attempt'] == cut['attempt'] else 'n+1'} on the {where}",
            "detail": f"cut {cut['hold']:.1f} s; attempt {cut['attempt']} -> {row['attempt']}"}


def web_redis_partition(stack, rng):
    """The web host is cut off from Redis (its port only; PostgreSQL still reachable) while
    5-12 signed webhooks for distinct records arrive: each is stored and acknowledged (200, in
    less than 10 s) although no dispatcher can be kicked, and every one is dispatched: one
    record run (batched: webapp/record_batches.py), completed with the sandbox's data."""
    from webapp.connectors.sandbox import SandboxConnector

    before = stack.query("SELECT coalesce(max(id), 0) AS m FROM webhook_deliveries")[0]["m"]
    events = {f"msg_{uuid.uuid4().hex[:12]}": index for index in rng.sample(range(1000), rng.randint(5, 12))}
    hold = rng.uniform(1.5, 2.5) * STALE_AFTER
    stack.net.partition("web", [stack.redis_server.port])
    started = time.monotonic()
    violations = []
    # Spread over the cut, each from its own thread: a slow answer must not hold the next one back.
    due = sorted(rng.uniform(0, hold * 0.8) for _ in events)

    def send(item):
        (msg_id, index), at = item
        time.sleep(max(0.0, started + at - time.monotonic()))
        body = json.dumps({"type": "item.updated", "data": {"id": f"item-{index:07d}"}}).encode()
        sent = time.monotonic()
        try:
            answer = requests.post(f"{stack.web_url}/webhooks/hooks", data=body, timeout=30,
                                   headers=standard_headers(body, WEBHOOK_SECRET, msg_id=msg_id))
            return answer.status_code, time.monotonic() - sent
        except requests.RequestException as exc:
            return type(exc).__name__, time.monotonic() - sent
    try:
        with ThreadPoolExecutor(len(events)) as pool:
            answers = pool.map(send, zip(events.items(), due))
            time.sleep(max(0.0, started + hold - time.monotonic()))
            stack.net.heal("web")
            statuses = list(answers)
    finally:
        if "web" in stack.net.partitioned:
            stack.net.heal("web")
    healed = time.monotonic()
    waiting_at_heal = stack.query("SELECT count(*) AS n FROM webhook_deliveries WHERE id > :m AND outcome = 'received'",
                                  m=before)[0]["n"]
    violations += [f"a webhook sent while the web host was cut off from Redis answered {s} after {t:.1f} s"
                   for s, t in statuses if s != 200]
    # Providers give up on an answer after about 10 s (and send again): an acknowledgement must come sooner.
    violations += [f"a webhook sent while the web host was cut off from Redis waited {t:.1f} s for its answer"
                   for s, t in statuses if s == 200 and t >= WEBHOOK_ANSWER_LIMIT]

    wait_dispatched(stack, before, violations)
    deliveries = stack.query("SELECT * FROM webhook_deliveries WHERE id > :m", m=before)
    if sorted(d["provider_event_id"] for d in deliveries) != sorted(events):
        violations.append(f"{len(deliveries)} deliveries stored for {len(events)} acknowledged events")
    run_ids = batched_record_runs(stack, deliveries, events, violations)
    if wait_terminal(stack, run_ids):
        expect_completed(stack, run_ids, violations)
    truth = SandboxConnector({"records": 1000}, {}, None)
    for index in events.values():
        rows = stack.query("SELECT r.data FROM records r JOIN connections c ON c.id = r.connection_id "
                           "WHERE c.name = 'hooks' AND r.external_id = :e", e=f"item-{index:07d}")
        if len(rows) != 1 or rows[0]["data"] != truth._record(index):
            violations.append(f"record item-{index:07d}: {rows!r}")
    slow = sorted(round(t, 1) for _, t in statuses if t > 1)
    return {"faults": 1, "recover": time.monotonic() - healed, "violations": violations,
            "detail": f"cut {hold:.1f} s; {len(events)} webhooks, answers over 1 s: {slow or 'none'}; "
                      f"{waiting_at_heal} not yet dispatched at the heal"}


WEBHOOK_ANSWER_LIMIT = 10.0  # seconds

# Scenarios on the stack whose workers and web server are network hosts (tests/chaos/runner.py).
PARTITION = {"worker_host_partition", "worker_redis_partition", "web_redis_partition"}

# Scenarios that get a stack of their own on a throwaway cluster (tests/chaos/runner.py).
OWN_CLUSTER = {"database_restart"}

SCENARIOS = {
    "worker_sigkill": worker_sigkill,
    "worker_sigterm": worker_sigterm,
    "follow_up_worker_sigkill": follow_up_worker_sigkill,
    "worker_restart_same_name": worker_restart_same_name,
    "supervisor_sigkill": supervisor_sigkill,
    "redis_restart": redis_restart,
    "database_restart": database_restart,
    "provider_outage": provider_outage,
    "provider_429_storm": provider_429_storm,
    "failed_sync_deletes_nothing": failed_sync_deletes_nothing,
    "concurrent_sync_now": concurrent_sync_now,
    "duplicate_webhooks": duplicate_webhooks,
    "clock_jump": clock_jump,
    "outbox_delivery": outbox_delivery,
    "worker_host_partition": worker_host_partition,
    "worker_redis_partition": worker_redis_partition,
    "web_redis_partition": web_redis_partition,
}
