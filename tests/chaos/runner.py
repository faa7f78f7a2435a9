"""Run scenarios and collect the table: scenario, trials, faults injected, invariant
violations, time to recover. The scenarios share one stack on the shared PostgreSQL server,
except those in OWN_CLUSTER (the real database restart), which get a stack of their own on a
throwaway cluster, started after the shared one is stopped."""
import os
import random
import statistics
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from .harness import Stack, hosts_parts
from .invariants import ActiveRunSampler, check_all, records_match_provider
from .netns import unavailable_reason as netns_unavailable_reason
from .pgcluster import PostgresCluster, unavailable_reason
from .scenarios import OWN_CLUSTER, PARTITION, SCENARIOS, connections


def in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def stack_groups(scenarios):
    """[(scenario names, Stack kwargs)]: the shared stack's, then the own-cluster stack's, then
    the network hosts' stack's (PARTITION, on a throwaway cluster of its own too).
    Where no cluster can be made, OWN_CLUSTER scenarios run on the shared stack and fall back
    to their weaker fault (they say so in their notes); in CI that is an error, not a fallback.
    Partition scenarios have no weaker fault: without hosts they are skipped (see skipped())."""
    own = [name for name in scenarios if name in OWN_CLUSTER]
    missing = unavailable_reason() if own else None
    if missing and in_ci():
        raise RuntimeError(f"CI must restart a real PostgreSQL server in {own}, but no throwaway cluster "
                           f"can be made: {missing}")
    shared = [name for name in scenarios if name not in PARTITION and (name not in OWN_CLUSTER or missing)]
    groups = [(shared, {})] if shared else []
    if own and not missing:
        groups.append((own, {"own_cluster": True}))
    hosted = [name for name in scenarios if name in PARTITION]
    if hosted and not skipped(hosted):
        groups.append((hosted, {"hosts": True}))
    return groups


def skipped(scenarios):
    """Why the partition scenarios among `scenarios` cannot run here (None: they can). They
    need root, `ip netns` and iptables, and a throwaway cluster; under CI=true a reason is
    an error, not a skip."""
    if not any(name in PARTITION for name in scenarios):
        return None
    reason = netns_unavailable_reason() or unavailable_reason()
    if reason and in_ci():
        raise RuntimeError(f"CI must partition network hosts in {sorted(PARTITION & set(scenarios))}, "
                           f"but it cannot here: {reason}")
    return reason


def run(scenarios, trials, seed, log=print, stack_factory=Stack, self_check=False):
    """Returns {scenario: {"trials", "faults", "violations": [..], "recover": [seconds], "notes": {..}}}.
    self_check: at the end, corrupt the synced data and make sure the check notices."""
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    rng = random.Random(seed)
    # Drawn in the interleaved order (trial by trial, scenario by scenario) whatever stack runs
    # what, so --seed replays each trial's timing as the run's lines printed it.
    seeds = {(trial, name): rng.randrange(2**32) for trial in range(trials) for name in scenarios}
    results = {name: {"trials": 0, "faults": 0, "violations": [], "recover": [], "notes": {}} for name in scenarios}
    groups = stack_groups(scenarios)
    why = skipped(scenarios)
    for name in PARTITION & set(scenarios) if why else ():
        results[name]["notes"][f"SKIPPED: no network hosts here ({why})"] = trials
        log(f"{name:20s} SKIPPED: no network hosts can be made here: {why}")
    # initdb and the first start (a few seconds, mostly waiting on the disk), and the network hosts,
    # made while the first stack runs.
    prepared = {}  # group index -> future of the Stack kwargs made ahead
    early = ThreadPoolExecutor(2) if len(groups) > 1 else None
    for index, (_, options) in enumerate(groups[1:], start=1):
        if options.get("hosts"):
            prepared[index] = early.submit(hosts_parts)
        elif options.get("own_cluster"):
            prepared[index] = early.submit(lambda: {"cluster": PostgresCluster().start()})
    try:
        for index, (names, options) in enumerate(groups):
            if index in prepared:
                options = dict(options, **prepared.pop(index).result())  # the stack owns them now
            last = index == len(groups) - 1
            _run_group(names, options, trials, seeds, results, log, stack_factory, self_check and last)
    finally:
        for future in prepared.values():  # a group failed first: nothing made ahead may outlive the run
            try:
                for part in future.result().values():
                    part.destroy()
            except Exception:
                pass
        if early:
            early.shutdown()
    return results


def _run_group(scenarios, options, trials, seeds, results, log, stack_factory, self_check):
    stack = stack_factory(**options).start(connections)
    try:
        for trial in range(trials):
            for name in scenarios:
                trial_seed = seeds[(trial, name)]
                started = time.monotonic()
                with ActiveRunSampler(stack) as sampler:
                    try:
                        result = SCENARIOS[name](stack, random.Random(trial_seed))
                    except Exception:
                        result = {"faults": 0, "violations": [f"scenario raised:\n{traceback.format_exc()}"]}
                    violations = check_all(stack, sampler, result)
                entry = results[name]
                entry["trials"] += 1
                entry["faults"] += result.get("faults", 0)
                if "recover" in result:
                    entry["recover"].append(result["recover"])
                if result.get("note"):
                    entry["notes"][result["note"]] = entry["notes"].get(result["note"], 0) + 1
                entry["violations"] += [f"trial {trial} (seed {trial_seed}): {v}" for v in violations]
                log(f"{name:20s} trial {trial + 1}/{trials} seed {trial_seed}: {result.get('faults', 0)} faults, "
                    f"{len(violations)} violations, {time.monotonic() - started:.1f}s"
                    + (f", recovered in {result['recover']:.1f}s" if "recover" in result else "")
                    + "".join(f" ({result[k]})" for k in ("note", "detail") if result.get(k))
                    + "".join(f"\n    {v}" for v in violations))
        if self_check:
            results["self_check"] = {"trials": 1, "faults": 2, "recover": [], "notes": {},
                                     "violations": _self_check(stack)}
    finally:
        stack.stop()


def _self_check(stack):
    """The record invariant is not vacuous: an edited and a vanished record are both noticed."""
    last = stack.query("SELECT r.id FROM runs r JOIN connections c ON c.id = r.connection_id "
                       "WHERE c.name = 'api' AND r.status = 'completed' ORDER BY r.id DESC LIMIT 1")[0]["id"]
    if records_match_provider(stack, last):
        return ["records did not match before the self-check corrupted them"]
    with stack.engine.begin() as conn:
        conn.execute(sa.text("UPDATE records SET data = '{\"id\": \"x\"}' WHERE id = (SELECT min(id) FROM records "
                             "WHERE deleted_at IS NULL AND connection_id = (SELECT id FROM connections "
                             "WHERE name = 'api'))"))
        conn.execute(sa.text("UPDATE records SET deleted_at = now() WHERE id = (SELECT max(id) FROM records "
                             "WHERE deleted_at IS NULL AND connection_id = (SELECT id FROM connections "
                             "WHERE name = 'api'))"))
    found = records_match_provider(stack, last)
    if len(found) != 2:
        return [f"the record check missed corrupted data: {found}"]
    return []


def table(results, seed):
    lines = [f"seed {seed}", "",
             "| scenario | trials | faults injected | invariant violations | time to recover (median / max) |",
             "|---|---:|---:|---:|---|"]
    for name, r in results.items():
        recover = (f"{statistics.median(r['recover']):.1f} s / {max(r['recover']):.1f} s"
                   if r["recover"] else "-")
        lines.append(f"| {name} | {r['trials']} | {r['faults']} | {len(r['violations'])} | {recover} |")
    notes = [f"- {name}: {note} ({count} of {r['trials']} trials)"
             for name, r in results.items() for note, count in r.get("notes", {}).items()]
    return "\n".join(lines + ([""] + notes if notes else []))
