"""The soak's continuous load, on connections of its own (the chaos scenarios keep theirs:
several of their checks count the runs of `api` or read `hooks`' records):

- LOAD_CONNECTIONS sandbox connections `load-NN` on `every:1` schedules;
- a signed webhook stream to `stream-hooks` (Standard Webhooks), a tenth of them replays of
  an earlier message (must be counted as duplicates, never run twice);
- outbox events for a few Loops contacts, one after the other, each contact's in order;
- API triggers (POST /api/connections/load-NN/runs) and CLI triggers
  (`flask sync run load-NN --queue --no-follow`, the operator's manual sync).

Each sender retries a refused request (5xx, 429, no answer) as a provider or publisher
would, for RETRY_FOR seconds; what was accepted is promised and checked afterwards
(check())."""
import json
import subprocess
import sys
import threading
import time
import uuid

import requests

from tests.chaos.scenarios import SETTLE_TIMEOUT, outbox_machinery
from tests.soak.sampler import MIN_RISE, role_pids, socket_inodes
from tests.support import ROOT, wait_for
from tests.webapp.webhooks.signing import standard_headers, whsec

LOAD_CONNECTIONS = 30
STREAM_SECRET = whsec()
CONTACTS = 5
RETRY_FOR = 120  # a real database restart plus its recovery is well under this
NOT_DISPATCHED = ("received", "dispatching")


def load_connections():
    conns = [{"name": f"load-{n:02d}", "connector": "sandbox", "schedule": "every:1",
              "settings": {"records": 20, "page_size": 10}} for n in range(1, LOAD_CONNECTIONS + 1)]
    conns.append({"name": "stream-hooks", "connector": "sandbox",
                  "settings": {"records": 1000, "allowed_triggers": ["manual", "webhook", "api"]},
                  "credentials": {"webhook_secret": STREAM_SECRET}})
    return conns


def warm_pools(stack, concurrency=100):
    """Bring the web process to its ceiling before anything is measured: `concurrency` Sync-now
    requests and as many signed webhooks at once (the chaos catalogue's concurrent_sync_now
    sends 100). gunicorn's gthread pool starts its threads, and each thread its database and
    Redis connections, only as requests need them, then keeps them: a first burst mid-soak
    would show as a step in threads' memory, descriptors and connections, which is the pools
    reaching their bound (2 x 32 threads), not growth."""
    from concurrent.futures import ThreadPoolExecutor

    barrier = threading.Barrier(concurrency)

    def sync_now(_):
        barrier.wait()
        return stack.api("POST", "/connections/load-01/runs", json={"mode": "full"}).status_code

    def webhook(n):
        body = json.dumps({"type": "item.updated", "data": {"id": f"item-{n:07d}"}}).encode()
        return requests.post(f"{stack.web_url}/webhooks/stream-hooks", data=body, timeout=60,
                             headers=standard_headers(body, STREAM_SECRET, msg_id=f"msg_warm_{uuid.uuid4().hex}")
                             ).status_code
    # Which of the two web processes accepts each connection is up to the kernel, so one burst
    # may leave one process's threads short of the bound and a later burst of the catalogue
    # would start them (seen: descriptors up 10 in a CI soak). Repeat until a burst adds nothing.
    answers, level = [], _web_worker_descriptors(stack)
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(WARM_UP_BURSTS):
            answers += list(pool.map(sync_now, range(concurrency)))
            barrier.reset()
            answers += list(pool.map(webhook, range(concurrency)))
            barrier.reset()
            now = _web_worker_descriptors(stack)
            if now - level < MIN_RISE["fds"]:
                break
            level = now
    return {code: answers.count(code) for code in set(answers)}


WARM_UP_BURSTS = 6


def _web_worker_descriptors(stack):
    return sum(socket_inodes(pid)[0] or 0 for pid in role_pids(stack).get("web-workers", ()))


class Load:
    def __init__(self, stack, rng, webhook_every=(1.0, 3.0), outbox_every=(1.0, 3.0), api_every=(5.0, 15.0),
                 cli_every=(45.0, 90.0)):
        self.stack, self.rng = stack, rng
        self.every = {"webhooks": webhook_every, "outbox": outbox_every, "api": api_every, "cli": cli_every}
        self.tag = uuid.uuid4().hex[:6]
        self.emails = [f"soak{self.tag}-{k}@example.com" for k in range(CONTACTS)]
        self.webhooks = {}  # accepted message id -> record index
        self.webhook_replays = 0  # accepted sends of an already accepted message
        self.webhook_retries = 0  # sends repeated after no answer / 5xx (each may have been stored)
        self.effects = {email: [] for email in self.emails}  # accepted events' idempotency keys, in order
        self.outbox_retries = 0
        self.api_triggers = {}  # outcome -> count
        self.cli_triggers = {"ok": 0, "failed": 0}
        self.refused = {"webhooks": 0, "outbox": 0, "api": 0, "cli": 0}  # given up (after retries for senders)
        self.violations = []
        self.quiet = {"webhooks": threading.Event()}  # set: that stream pauses (a scenario counts all deliveries)
        self.started = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._every, args=(name, fn), daemon=True, name=f"soak-{name}")
                         for name, fn in (("webhooks", self._webhook), ("outbox", self._event),
                                          ("api", self._api_trigger), ("cli", self._cli_trigger))]
        # One Random per thread, drawn up front: the seed decides each stream's choices.
        self._rngs = {name: type(rng)(rng.randrange(2**32)) for name in self.every}

    def start(self):
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=RETRY_FOR + 60)
            if thread.is_alive():
                self.violations.append(f"the {thread.name} load thread did not stop")

    def counts(self):
        return {"webhooks accepted (distinct)": len(self.webhooks), "webhook replays accepted": self.webhook_replays,
                "outbox events accepted": sum(map(len, self.effects.values())),
                "API triggers": sum(self.api_triggers.values()), "API trigger outcomes": dict(self.api_triggers),
                "CLI triggers": dict(self.cli_triggers), "given up after retries": dict(self.refused),
                "webhook resends after no answer/5xx": self.webhook_retries,
                "outbox resends after no answer/5xx": self.outbox_retries}

    # -- the streams --------------------------------------------------------------------

    def _every(self, name, fn):
        rng = self._rngs[name]
        low, high = self.every[name]
        while not self._stop.wait(rng.uniform(low, high)):
            if name in self.quiet and self.quiet[name].is_set():
                continue
            try:
                fn(rng)
            except Exception as exc:  # a bug of the load itself must not end the stream silently
                with self._lock:
                    self.violations.append(f"the {name} stream raised {exc!r}")

    def _until_accepted(self, stream, accepted, send):
        """(True, retries) once an answer is in `accepted`; (False, retries) after RETRY_FOR seconds."""
        deadline = time.monotonic() + RETRY_FOR
        retries = 0
        while True:
            try:
                answer = send()
                if answer.status_code in accepted:
                    return True, retries
                if answer.status_code < 500 and answer.status_code != 429:
                    self.violations.append(f"{stream}: {answer.request.url} answered {answer.status_code}: "
                                           f"{answer.text[:200]}")
                    return False, retries
            except requests.RequestException:
                pass
            retries += 1
            if time.monotonic() > deadline or self._stop.is_set() and retries > 50:
                self.refused[stream] += 1
                return False, retries
            time.sleep(0.5)

    def _webhook(self, rng):
        if self.webhooks and rng.random() < 0.1:
            msg_id = rng.choice(sorted(self.webhooks))
            index, replay = self.webhooks[msg_id], True
        else:
            msg_id, index, replay = f"msg_soak_{self.tag}_{len(self.webhooks)}", rng.randrange(1000), False
        body = json.dumps({"type": "item.updated", "data": {"id": f"item-{index:07d}"}}).encode()
        ok, retries = self._until_accepted("webhooks", (200,), lambda: requests.post(
            f"{self.stack.web_url}/webhooks/stream-hooks", data=body, timeout=15,
            headers=standard_headers(body, STREAM_SECRET, msg_id=msg_id)))
        self.webhook_retries += retries
        if ok and replay:
            self.webhook_replays += 1
        elif ok:
            self.webhooks[msg_id] = index

    def _event(self, rng):
        n = sum(map(len, self.effects.values()))
        email = self.emails[rng.randrange(CONTACTS)]
        key = f"soak{self.tag}-{n}"
        event = {"type": "score_changed", "key": email, "payload": {"email": email, "score": n},
                 "idempotency_key": key, "connection": "loops"}
        ok, retries = self._until_accepted("outbox", (202,), lambda: self.stack.api("POST", "/outbox", json=event))
        self.outbox_retries += retries
        if ok:
            self.effects[email].append(key)
        # Not accepted: never promised; the next event of this contact still has to follow the
        # accepted ones in order.

    def _api_trigger(self, rng):
        name = f"load-{rng.randint(1, LOAD_CONNECTIONS):02d}"
        mode = rng.choice(["full", "incremental"])
        try:
            answer = self.stack.api("POST", f"/connections/{name}/runs", json={"mode": mode})
        except requests.RequestException:
            self.refused["api"] += 1
            return
        if answer.status_code in (200, 201):
            outcome = answer.json().get("outcome") or ("created" if answer.status_code == 201 else "existing")
            self.api_triggers[outcome] = self.api_triggers.get(outcome, 0) + 1
        elif answer.status_code >= 500 or answer.status_code == 429:
            self.refused["api"] += 1  # a fault in progress (database or Redis down): the caller would retry
        else:
            self.violations.append(f"API trigger of {name} answered {answer.status_code}: {answer.text[:200]}")

    def _cli_trigger(self, rng):
        name = f"load-{rng.randint(1, LOAD_CONNECTIONS):02d}"
        done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "sync", "run", name, "--queue",
                               "--no-follow"], cwd=ROOT, env=self.stack.env, capture_output=True, text=True,
                              timeout=120)
        self.cli_triggers["ok" if done.returncode == 0 else "failed"] += 1
        if done.returncode != 0:
            self.last_cli_failure = (done.stdout + done.stderr).strip().splitlines()[-1:]

    # -- afterwards -----------------------------------------------------------------------

    def check(self):
        """Every accepted webhook stored once and dispatched, its replays counted as duplicates,
        its record run ended; every accepted event delivered (or dead with a reason), each
        contact's effects in publish order, none twice."""
        stack, violations = self.stack, list(self.violations)
        accounted = {}
        ids = set(self.webhooks)

        def rows():
            return stack.query("SELECT provider_event_id, outcome, run_ids, duplicates FROM webhook_deliveries "
                               "WHERE provider_event_id LIKE :p", p=f"msg_soak_{self.tag}_%")
        try:
            wait_for(lambda: all(r["outcome"] not in NOT_DISPATCHED for r in rows()), timeout=SETTLE_TIMEOUT * 2,
                     interval=0.5, message="the stream's webhook deliveries dispatched")
        except AssertionError as exc:
            violations.append(str(exc))
        found = rows()
        stored = {r["provider_event_id"]: r for r in found}
        missing = sorted(ids - stored.keys())
        if missing:
            violations.append(f"{len(missing)} accepted webhooks not stored, e.g. {missing[:3]}")
        undispatched = [r["provider_event_id"] for r in found if r["outcome"] in NOT_DISPATCHED]
        if undispatched:
            violations.append(f"{len(undispatched)} webhook deliveries never dispatched, e.g. {undispatched[:3]}")
        duplicates = sum(r["duplicates"] or 0 for r in found)
        # A send that got no answer may still have been stored: its resend is a duplicate too.
        if not self.webhook_replays <= duplicates <= self.webhook_replays + self.webhook_retries:
            violations.append(f"{duplicates} duplicates counted; {self.webhook_replays} replays accepted and "
                              f"{self.webhook_retries} resends")
        outcomes = {}
        for r in found:
            outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        run_ids = sorted({i for r in found for i in (r["run_ids"] or [])})
        statuses = {}
        for i in range(0, len(run_ids), 1000):
            for r in stack.query("SELECT status, count(*) AS n FROM runs WHERE id = ANY(:ids) GROUP BY status",
                                 ids=run_ids[i:i + 1000]):
                statuses[r["status"]] = statuses.get(r["status"], 0) + r["n"]
        accounted["webhooks"] = {"sent (distinct, accepted)": len(ids), "stored": len(stored.keys() & ids),
                                 "outcomes": outcomes, "duplicates counted": duplicates,
                                 "record runs": statuses}
        if set(statuses) - {"completed"}:
            violations.append(f"the stream's record runs ended {statuses}")

        # One outbox row per mapped action; the loops mapping has one: "<event key>.0".
        keys = [f"{k}.0" for effects in self.effects.values() for k in effects]

        def events():
            return stack.query("SELECT idempotency_key, status, last_error FROM outbox_events "
                               "WHERE idempotency_key LIKE :p", p=f"soak{self.tag}-%")
        try:
            wait_for(lambda: all(r["status"] in ("done", "dead") for r in events()), timeout=SETTLE_TIMEOUT * 2,
                     interval=0.5, message="the soak's outbox events delivered")
        except AssertionError as exc:
            violations.append(f"{exc}; {outbox_machinery(stack)}")
        states = {r["idempotency_key"]: r for r in events()}
        lost = [k for k in keys if k not in states]
        if lost:
            violations.append(f"{len(lost)} accepted outbox events not stored, e.g. {lost[:3]}")
        dead = {k: states[k]["last_error"] for k in keys if k in states and states[k]["status"] == "dead"}
        speechless = [k for k, error in dead.items() if not (error or "").strip()]
        if speechless:
            violations.append(f"{len(speechless)} dead outbox events without a reason, e.g. {speechless[:3]}")
        pending = [k for k in keys if k in states and states[k]["status"] not in ("done", "dead")]
        if pending:
            violations.append(f"{len(pending)} outbox events neither delivered nor dead, e.g. {pending[:3]}")
        sequences = stack.loops("GET", "/_chaos/sequences")
        for email, published in self.effects.items():
            expected = [f"{k}.0" for k in published if states.get(f"{k}.0", {}).get("status") == "done"]
            if (sequences.get(email) or []) != expected:
                got = sequences.get(email) or []
                violations.append(f"{email}: {len(got)} effects, {len(expected)} delivered events; first difference "
                                  f"at {next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)}")
        duplicate_effects = [d for d in stack.loops("GET", "/_chaos/duplicates") if d[0] in self.effects]
        if duplicate_effects:
            violations.append(f"outbox effects applied twice: {duplicate_effects[:5]}")
        accounted["outbox"] = {"accepted": len(keys), "done": sum(1 for k in keys if states.get(k, {}).get("status")
                                                                   == "done"),
                               "dead (with a reason)": len(dead) - len(speechless), "lost": len(lost),
                               "dead reasons": sorted(set(dead.values()))[:3]}
        return violations, accounted
