"""Run scenarios against one stack and collect the table: scenario, trials, faults
injected, invariant violations, time to recover."""
import random
import statistics
import time
import traceback

import sqlalchemy as sa

from .harness import Stack
from .invariants import ActiveRunSampler, check_all, records_match_provider
from .scenarios import SCENARIOS, connections


def run(scenarios, trials, seed, log=print, stack_factory=Stack, self_check=False):
    """Returns {scenario: {"trials", "faults", "violations": [..], "recover": [seconds]}}.
    self_check: at the end, corrupt the synced data and make sure the check notices."""
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    rng = random.Random(seed)
    results = {name: {"trials": 0, "faults": 0, "violations": [], "recover": []} for name in scenarios}
    stack = stack_factory().start(connections)
    try:
        for trial in range(trials):
            for name in scenarios:
                trial_seed = rng.randrange(2**32)
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
                entry["violations"] += [f"trial {trial} (seed {trial_seed}): {v}" for v in violations]
                log(f"{name:20s} trial {trial + 1}/{trials} seed {trial_seed}: {result.get('faults', 0)} faults, "
                    f"{len(violations)} violations, {time.monotonic() - started:.1f}s"
                    + "".join(f"\n    {v}" for v in violations))
        if self_check:
            results["self_check"] = {"trials": 1, "faults": 2, "recover": [], "violations": _self_check(stack)}
    finally:
        stack.stop()
    return results


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
    return "\n".join(lines)
